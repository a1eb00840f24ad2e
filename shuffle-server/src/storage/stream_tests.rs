//! The stream index state machine.

use super::*;
