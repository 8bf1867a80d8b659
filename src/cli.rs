//! conntrackd-compatible command-line flags and their long forms.
