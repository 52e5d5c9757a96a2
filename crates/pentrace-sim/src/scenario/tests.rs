//! Tests of scenario planning.
