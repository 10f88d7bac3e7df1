//! Shared harness for cross-component tests.
