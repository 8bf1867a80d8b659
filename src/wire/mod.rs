//! Byte codecs for the sync link: the native format and conntrackd's.
