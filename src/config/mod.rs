//! Configuration: the YAML schema, defaults, validation, and conntrackd.conf.
