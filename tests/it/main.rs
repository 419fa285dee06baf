//! Integration tests: the real service against a real redis-server or the embedded store.

mod helpers;

mod browser;
mod config_errors;
mod counters;
mod embedded;
mod fault_schedule;
mod hang_ups;
mod hostile_input;
mod lifecycle;
mod redis_faults;
mod sentinel;
mod verify_tool;
mod visits;
