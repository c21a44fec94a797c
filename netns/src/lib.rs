//! Virtual LANs over netlink (filled in by the netns issue).
