//! The test driver (filled in by the driver issue).
