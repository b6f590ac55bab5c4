//! Placeholder: the emulator is being built (issue 3); nothing here works yet.
