//! Integration tests of the `gridshare` command (run as a process, against an embedded chain
//! state file and against anvil) and of the watcher (a real MQTT broker, a real chain).

mod cli;
mod support;
mod watcher;
