//! The size of an idle session's task.

use super::*;

/// The size of the future an async fn returns, without calling it.
fn future_size<A, F, Fut>(_: F) -> usize
where
    F: FnOnce(A) -> Fut,
{
    std::mem::size_of::<Fut>()
}

/// tokio's task cell around a future of `size` bytes on x86_64 and aarch64 (tokio 1.5x,
/// `runtime/task/core.rs`): a 32-byte header, the scheduler and task id (16), the stage's tag
/// (8, `repr(C)`), the future, a 48-byte trailer, all aligned to 128.
fn task_cell(size: usize) -> usize {
    (32 + 16 + 8 + size + 48).div_ceil(128) * 128
}

/// An idle client costs its task (this future, in its cell) plus a few small allocations; the
/// rare paths are boxed so that they do not size it. Inline, a history read took it to 7.8 KB,
/// and the close, ping and catch-up paths to 1.9 KB. At 792 bytes (the tracker's token
/// included) the cell is 896: eight bytes more and every idle client costs 128 more.
#[test]
fn an_idle_session_task_stays_small() {
    // What the server spawns: the session in its task tracker's wrapper (a token, 8 bytes).
    let tracker = tokio_util::task::TaskTracker::new();
    let task = future_size(|start: Box<Start>| tracker.track_future(serve_client(start)));
    let ws = std::mem::size_of::<Ws>();
    eprintln!(
        "spawned session future: {task} bytes, task cell {} (Session {}, of which the socket {ws})",
        task_cell(task),
        std::mem::size_of::<Session>()
    );
    assert!(
        task_cell(task) <= 896,
        "an idle session's task grew to {task} bytes, a {}-byte cell (the socket is {ws}): box \
         the new rarely used state (see serve_client), or narrow a field of Session",
        task_cell(task)
    );
}
