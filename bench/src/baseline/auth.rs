//! JWT auth as the sidecar's `--auth jwt` with a static secret: HS256, `exp` required, the
//! token from `?token=` or `Authorization: Bearer`; groups from the `groups` claim (a list or
//! one string) plus the user's own group `user:{sub}`.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Most groups one client may be in (the sidecar's limit).
const MAX_GROUPS: usize = 100;

/// Verifies tokens signed with one HS256 secret.
pub struct Keys {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    groups: Groups,
    sub: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Groups {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Keys {
    pub fn hs256(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The groups the request's token grants, or why it is refused.
    pub fn groups(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Vec<Box<str>>, &'static str> {
        let token = token(query, headers).ok_or("no token (?token= or Authorization: Bearer)")?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| "token invalid or expired")?
            .claims;
        let mut groups: Vec<Box<str>> = match claims.groups {
            Groups::None => Vec::new(),
            Groups::One(g) => vec![g.into()],
            Groups::Many(gs) => gs.into_iter().map(Into::into).collect(),
        };
        if let Some(sub) = claims.sub.filter(|s| !s.is_empty()) {
            groups.push(format!("user:{sub}").into());
        }
        groups.sort();
        groups.dedup();
        groups.retain(|g| !g.is_empty());
        if groups.len() > MAX_GROUPS {
            return Err("too many groups in the token");
        }
        Ok(groups)
    }
}

fn token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    // A JWT is base64url and dots: nothing in it is percent-encoded.
    let from_query = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="));
    from_query.or_else(|| {
        headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
    }

    #[test]
    fn groups_from_the_claims_and_the_user() {
        let keys = Keys::hs256("s3cret");
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let t = sign(serde_json::json!({"sub": "u1", "groups": ["g2", "g1"], "exp": exp}));
        let q = format!("a=b&token={t}");
        let groups = keys.groups(Some(&q), &HeaderMap::new()).expect("valid");
        assert_eq!(
            groups,
            vec!["g1".into(), "g2".into(), "user:u1".into()] as Vec<Box<str>>
        );

        let mut h = HeaderMap::new();
        let one = sign(serde_json::json!({"groups": "g", "exp": exp}));
        h.insert(
            AUTHORIZATION,
            format!("Bearer {one}").parse().expect("header"),
        );
        assert_eq!(keys.groups(None, &h), Ok(vec!["g".into()]));
    }

    #[test]
    fn refuses_bad_tokens() {
        let keys = Keys::hs256("s3cret");
        let h = HeaderMap::new();
        assert!(keys.groups(None, &h).is_err());
        let no_exp = sign(serde_json::json!({"groups": ["g"]}));
        assert!(keys.groups(Some(&format!("token={no_exp}")), &h).is_err());
        let old = sign(serde_json::json!({"groups": ["g"], "exp": 1000}));
        assert!(keys.groups(Some(&format!("token={old}")), &h).is_err());
        let other = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"exp": jsonwebtoken::get_current_timestamp() + 60}),
            &jsonwebtoken::EncodingKey::from_secret(b"other"),
        )
        .expect("sign");
        assert!(keys.groups(Some(&format!("token={other}")), &h).is_err());
    }
}
