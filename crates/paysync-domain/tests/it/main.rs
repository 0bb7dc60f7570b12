//! Integration tests of the pure domain against the shared fixtures and signature vectors.

mod stripe_vectors;
