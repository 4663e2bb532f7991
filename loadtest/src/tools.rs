//! Installs the external tools the tests use (kubectl, helm, Python tools). Work in progress.
