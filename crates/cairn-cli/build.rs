//! Lays out the binary's hot code together.
//!
//! `link/hot-symbols.txt` lists the functions the benchmark workloads and `cairn run` execute,
//! hottest first (see `link/README.md` for how it is made). Given to the linker as a symbol
//! ordering file, it puts those functions next to one another at the start of `.text`, so the
//! code a running engine touches spans about 3 MB of pages instead of being spread over the
//! whole 27 MB: a `plans` run maps 9 MB less of the executable. It changes where code lies,
//! never what it does: a symbol the list names that the build does not have (renamed, or a
//! toolchain whose symbol hashes differ) is skipped without a warning.
//!
//! Where the C library is glibc 2.36 or later, the relocations the loader applies at start are
//! also packed (`-z pack-relative-relocs`, DT_RELR): the 1 MB `.rela.dyn` table, which every
//! start reads whole, becomes a few kilobytes.
//!
//! Only where the linker is known to be LLD, which takes these options: Rust's default on
//! `x86_64-unknown-linux-gnu` since 1.90, unless the build chooses another linker. Set
//! `CAIRN_NO_SYMBOL_ORDER=1` to link without either.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=CAIRN_NO_SYMBOL_ORDER");
    if env::var_os("CAIRN_NO_SYMBOL_ORDER").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    // A linker of the build's own choosing may not be LLD.
    if env::var_os("RUSTC_LINKER").is_some() {
        return;
    }
    // Nor may one chosen by flags (`-C linker=…`, `-C link-arg=-fuse-ld=bfd`, …): any flag
    // naming the link leaves it alone.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("link") {
        return;
    }
    if !rustc_links_with_lld() {
        return;
    }
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("link")
        .join("hot-symbols.txt");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    if glibc_reads_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// glibc's loader applies packed relocations from 2.36 on (the binary then asks for
/// `GLIBC_ABI_DT_RELR`, so an older loader refuses it by name rather than misreading it).
fn glibc_reads_relr() -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    // "glibc 2.36"
    let version = String::from_utf8_lossy(&out.stdout);
    let (major, minor) = major_minor(version.split_whitespace().nth(1).unwrap_or(""));
    (major, minor) >= (2, 36)
}

fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// rustc 1.90 and later link `x86_64-unknown-linux-gnu` with its own LLD by default.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    major_minor(version.split_whitespace().nth(1).unwrap_or("")) >= (1, 90)
}
