//! KVM embedding (under construction).
