//! Accept/ignore flows by protocol, address and TCP state.
