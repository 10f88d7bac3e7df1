//! The sidecar's modules import each other without a cycle: every `crate::` / `super::` path in
//! a source file (tests left out) is an edge to the file of the module it names, and the graph
//! of files must have no strongly connected component larger than one file.
//!
//! ```text
//! src/**/*.rs --paths--> (file -> file) edges --Tarjan--> cycles? --> fail, naming them
//! ```
//!
//! A cycle means two rooms that cannot be read (or changed) one without the other; the fix is
//! usually a small leaf module both can use, or a trait the lower one defines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles known today and removed by work in progress elsewhere; each entry names its files.
/// Keep this empty once they are gone: a new cycle must fail.
const KNOWN: &[&[&str]] = &[];

type Module = Vec<String>;

#[test]
fn sidecar_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let by_module: BTreeMap<&Module, &PathBuf> = files.iter().map(|(m, f)| (m, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source file");
        let from = name(&src, file);
        let out = edges.entry(from.clone()).or_default();
        for path in paths(&without_tests(&text), module, &by_module) {
            if let Some(target) = resolve(&path, &by_module) {
                let to = name(&src, target);
                if to != from {
                    out.insert(to);
                }
            }
        }
    }
    let cycles: Vec<Vec<String>> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .filter(|c| {
            !KNOWN.iter().any(|known| {
                known.len() == c.len() && known.iter().all(|f| c.iter().any(|x| x == f))
            })
        })
        .collect();
    let mut report = String::new();
    for c in &cycles {
        report.push_str(&format!("cycle of {} files:\n", c.len()));
        for f in c {
            let inside: Vec<&String> = edges[f].iter().filter(|t| c.contains(t)).collect();
            report.push_str(&format!("  {f} -> {inside:?}\n"));
        }
    }
    assert!(cycles.is_empty(), "import cycles in sidecar/src:\n{report}");
    // The checker itself finds what it should (the crate root names most modules).
    assert!(edges["lib.rs"].len() > 5, "{:?}", edges["lib.rs"]);
}

/// Every module file of the library (not `main.rs`, not test modules) with its module path.
fn modules(src: &Path) -> Vec<(Module, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            match parts.last().map(String::as_str) {
                Some("main") if parts.len() == 1 => continue,
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                Some("tests") => continue,
                _ => {}
            }
            out.push((parts, path));
        }
    }
    out.sort();
    out
}

fn name(src: &Path, file: &Path) -> String {
    file.strip_prefix(src)
        .expect("under src")
        .to_string_lossy()
        .into_owned()
}

/// The source without its `#[cfg(test)] mod tests` (always the last item here).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        // Comments may name paths (docs link to other rooms): only code counts.
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module-relative path the code names, made absolute (`crate::a::b`, `super::x`, and
/// `use child::...` of a child module), with brace groups expanded one level.
fn paths(code: &str, module: &Module, known: &BTreeMap<&Module, &PathBuf>) -> Vec<Module> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let ident_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if !ident_start || !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let (segments, end) = path_at(code, i);
        i = end.max(i + 1);
        let Some(base) = absolute(&segments, module, known) else {
            continue;
        };
        if code[end..].starts_with("::{") {
            let close = code[end..].find('}').map_or(code.len(), |c| end + c);
            for entry in code[end + 3..close].split(',') {
                let entry = entry.trim();
                let (inner, _) = path_at(entry, 0);
                let mut p = base.clone();
                p.extend(inner.into_iter().filter(|s| s != "self"));
                out.push(p);
            }
            i = close;
        } else {
            out.push(base);
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `a::b::c` starting at `start`: its segments and where it ends (before a `::{`).
fn path_at(code: &str, start: usize) -> (Vec<String>, usize) {
    let bytes = code.as_bytes();
    let mut segments = Vec::new();
    let mut i = start;
    loop {
        let s = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if s == i {
            break;
        }
        segments.push(code[s..i].to_owned());
        if code[i..].starts_with("::") && bytes.get(i + 2).is_some_and(|b| is_ident(*b)) {
            i += 2;
        } else {
            break;
        }
    }
    (segments, i)
}

/// The absolute module path of `segments` as written in `module`, when it is a crate path.
fn absolute(
    segments: &[String],
    module: &Module,
    known: &BTreeMap<&Module, &PathBuf>,
) -> Option<Module> {
    let first = segments.first()?;
    if segments.len() == 1 && first != "self" {
        return None; // `pub(crate)`, `pub(super)`: a visibility, not a path
    }
    match first.as_str() {
        "crate" => Some(segments[1..].to_vec()),
        "super" => {
            let mut base = module.clone();
            let mut rest = segments;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            Some(base)
        }
        "self" => {
            let mut base = module.clone();
            base.extend(segments[1..].iter().cloned());
            Some(base)
        }
        // A child module named directly (2018 paths: `use history::X` inside `broker`).
        child if segments.len() > 1 => {
            let mut base = module.clone();
            base.push(child.to_owned());
            known.contains_key(&base).then(|| {
                base.extend(segments[1..].iter().cloned());
                base
            })
        }
        _ => None,
    }
}

/// The file of the longest module prefix of `path`.
fn resolve<'a>(path: &Module, known: &BTreeMap<&Module, &'a PathBuf>) -> Option<&'a PathBuf> {
    (0..=path.len())
        .rev()
        .find_map(|n| known.get(&path[..n].to_vec()).copied())
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        let edges = st.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(lw));
            } else if st.on_stack.contains(w) {
                let iw = st.index[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(iw));
            }
        }
        if st.low[v] == st.index[v] {
            let mut component = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            component.sort();
            st.out.push(component);
        }
    }
    let mut st = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.out
}
