//! One node = one container.
