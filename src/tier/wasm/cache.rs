//! Where python.wasm lives, and the on-disk cache of its compiled form.
//!
//! `scripts/setup-wasm` installs python.wasm (pinned wheel, hash-checked). Compiling
//! it for this machine takes seconds, so the result is written once to
//! `<cache>/compiled/<wasm sha256>-<engine hash>.cwasm` and loaded in about a
//! millisecond afterwards.
//!
//! # Security invariant
//! Loading a compiled module runs its machine code, so only files Terrarium wrote are
//! loaded: the source is checked against [`PYTHON_WASM_SHA256`] before compiling, the
//! result is written atomically (temporary file, then rename) into a directory with
//! mode 0700, and a cached file is loaded only if it is a regular file owned by this
//! user in such a directory.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// sha256 of the one python.wasm this tier runs (CPython 3.12.0, WASI).
pub const PYTHON_WASM_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";
/// Its size in bytes (checked on every load; the full hash before compiling).
const PYTHON_WASM_SIZE: u64 = 26_267_204;
/// The command that installs it.
const SETUP: &str = "scripts/setup-wasm";

/// Where the wasm tier finds python.wasm and keeps its compiled form.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// The interpreter module.
    pub python_wasm: PathBuf,
    /// Directory for compiled modules.
    pub cache_dir: PathBuf,
    /// Warm instances kept started ahead of demand (0: every request starts CPython).
    pub pool_size: usize,
    /// Instances that may exist at once, running or warm (the pooling allocator's
    /// slots). Fixed per python.wasm path for the life of the process.
    pub max_instances: usize,
}

impl WasmConfig {
    /// `$TERRARIUM_PYTHON_WASM`, or `python-3.12.0.wasm` in `$TERRARIUM_CACHE`
    /// (default `~/.cache/terrarium`), where `scripts/setup-wasm` puts it.
    pub fn from_env() -> WasmConfig {
        let cache = std::env::var_os("TERRARIUM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
            home.join(".cache").join("terrarium")
        });
        let python_wasm = std::env::var_os("TERRARIUM_PYTHON_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("python-3.12.0.wasm"));
        WasmConfig { python_wasm, cache_dir: cache.join("compiled"), pool_size: 2, max_instances: 64 }
    }
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Loads python.wasm's compiled form, compiling and caching it first if needed.
///
/// # Errors
/// A message naming the fix: python.wasm missing or not the pinned file, or the cache
/// directory unusable.
pub fn load_module(engine: &Engine, config: &WasmConfig) -> Result<Module, String> {
    let wasm = &config.python_wasm;
    let meta = fs::metadata(wasm)
        .map_err(|e| format!("python.wasm is not installed ({}: {e}); run {SETUP} to fetch it", wasm.display()))?;
    if meta.len() != PYTHON_WASM_SIZE {
        return Err(format!(
            "{} is not the pinned python.wasm ({} bytes, expected {PYTHON_WASM_SIZE}); run {SETUP} to replace it",
            wasm.display(),
            meta.len()
        ));
    }
    ensure_private_dir(&config.cache_dir)?;
    let compiled = config.cache_dir.join(format!("{}-{}.cwasm", &PYTHON_WASM_SHA256[..16], engine_key(engine)));
    if !trusted_file(&compiled) {
        compile_into(engine, wasm, &compiled)?;
    }
    // SAFETY: `compiled` is a regular file, owned by this user, in a 0700 directory,
    // written by `compile_into` from a python.wasm whose sha256 was checked; wasmtime
    // additionally checks that it was compiled by a compatible engine.
    #[allow(unsafe_code, reason = "loading precompiled machine code is unsafe by nature")]
    let module = unsafe { Module::deserialize_file(engine, &compiled) };
    module.map_err(|e| format!("cannot load the compiled python.wasm ({}): {e}", compiled.display()))
}

fn compile_into(engine: &Engine, wasm: &Path, out: &Path) -> Result<(), String> {
    let bytes = fs::read(wasm).map_err(|e| format!("cannot read {}: {e}; run {SETUP}", wasm.display()))?;
    let got = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
    if got != PYTHON_WASM_SHA256 {
        return Err(format!(
            "{} has sha256 {got}, not the pinned {PYTHON_WASM_SHA256}; run {SETUP} to replace it",
            wasm.display()
        ));
    }
    eprintln!("terrarium: compiling python.wasm for this machine (once; it takes 10-20 s)...");
    let started = std::time::Instant::now();
    let code = engine.precompile_module(&bytes).map_err(|e| format!("cannot compile python.wasm: {e}"))?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode_0600().open(&tmp)?;
        f.write_all(&code)?;
        f.sync_all()?;
        fs::rename(&tmp, out)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", out.display())
    })?;
    eprintln!("terrarium: compiled in {:.1} s, cached at {}", started.elapsed().as_secs_f64(), out.display());
    Ok(())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create the cache directory {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    Ok(())
}

/// A regular file owned by this user, in a directory only this user can write.
fn trusted_file(path: &Path) -> bool {
    // SAFETY: geteuid cannot fail and has no side effects.
    #[allow(unsafe_code, reason = "libc::geteuid has no safe wrapper in std")]
    let me = unsafe { libc::geteuid() };
    let Ok(meta) = fs::symlink_metadata(path) else { return false };
    let Some(dir) = path.parent().and_then(|d| fs::metadata(d).ok()) else { return false };
    meta.file_type().is_file() && meta.uid() == me && dir.uid() == me && dir.mode() & 0o077 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_python_wasm_names_the_setup_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = WasmConfig {
            python_wasm: dir.path().join("nope.wasm"),
            cache_dir: dir.path().join("c"),
            pool_size: 0,
            max_instances: 4,
        };
        let engine = Engine::default();
        let err = load_module(&engine, &config).expect_err("missing");
        assert!(err.contains("scripts/setup-wasm"), "{err}");
    }

    #[test]
    fn a_wrong_file_is_refused_before_compiling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = dir.path().join("python.wasm");
        fs::write(&wasm, vec![0u8; PYTHON_WASM_SIZE as usize]).expect("write");
        let config = WasmConfig { python_wasm: wasm, cache_dir: dir.path().join("c"), pool_size: 0, max_instances: 4 };
        let err = load_module(&Engine::default(), &config).expect_err("wrong file");
        assert!(err.contains("sha256") && err.contains("scripts/setup-wasm"), "{err}");
    }

    #[test]
    fn only_private_owned_files_are_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("x.cwasm");
        fs::write(&f, b"x").expect("write");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(!trusted_file(&f), "a group/world-readable directory is not private enough");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(trusted_file(&f));
        assert!(!trusted_file(&dir.path().join("missing.cwasm")));
    }
}
