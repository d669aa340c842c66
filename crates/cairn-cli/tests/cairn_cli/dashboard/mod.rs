//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver) with
//! fantoccini: each test starts the real `cairn serve`, clicks as a person does, and checks the
//! result through the API. Screenshots land in `target/tmp/dashboard/` so a person can look at
//! what the tests saw.
//!
//! Needs `chromium` and `chromedriver` on the PATH (Debian's `chromium` and `chromium-driver`;
//! `.ci/run` installs them). `CAIRN_SKIP_BROWSER=1` skips these tests on a machine without them.

mod bench;
#[allow(dead_code)] // helpers for the tests that follow; not all are used by every module yet
mod harness;
mod history;
mod interventions;
mod pages;
mod plans;
mod rollback;
mod smoke;
mod templates;
