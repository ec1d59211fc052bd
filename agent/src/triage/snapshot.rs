//! `vigil incident snapshot` (below).
