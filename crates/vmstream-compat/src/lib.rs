//! Versioned device state (under construction).
