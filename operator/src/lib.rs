//! taskstream operator: reconciles `TaskStream` resources (group `taskstream.dev`).
