//! The kernel adapter: ctnetlink events, dumps and batched commits.
