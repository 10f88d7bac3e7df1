//! The size of an idle session's task.

use super::*;

/// The size of the future an async fn returns, without calling it.
fn future_size<A, F, Fut>(_: F) -> usize
where
    F: FnOnce(A) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// An idle client costs its task (this future, in a 128-byte aligned cell) plus a few small
/// allocations; the rare paths are boxed so that they do not size it. Inline, a history
/// read took it to 7.8 KB, and the close, ping and catch-up paths to 1.9 KB. The bound has
/// room for compiler changes, not for another inline catch-up.
#[test]
fn an_idle_session_task_stays_small() {
    let task = future_size(serve_client);
    let ws = std::mem::size_of::<Ws>();
    eprintln!(
        "serve_client future: {task} bytes (Session {}, of which the socket {ws})",
        std::mem::size_of::<Session>()
    );
    assert!(
        task <= ws + 700,
        "an idle session's task grew to {task} bytes (the socket is {ws}): box the new \
         rarely used state (see serve_client)"
    );
}
