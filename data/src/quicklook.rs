//! Quicklook PNG rendering of a 2-D slice.

use std::path::Path;

use crate::{DataError, Version};

pub(crate) fn render(
    _v: &Version,
    _spec: &str,
    _var: &str,
    _at: &[(String, usize)],
    _path: &Path,
) -> Result<(), DataError> {
    Err(DataError::Render("not implemented yet".into()))
}
