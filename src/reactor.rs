//! The mio reactor: reads sockets, calls the layers, arms timers. Glue only.
