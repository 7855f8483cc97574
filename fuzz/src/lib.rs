//! Fuzz targets for the parsers that take untrusted input.
