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
//! result is written atomically (temporary file, then rename) into a directory this
//! user owns and no one else can write (checked, with every directory above it, by
//! [`crate::dirs::OwnedDir`]); a cached file is opened through that directory's
//! handle, never through a link, must be a regular file of this user, and the file
//! handle that was checked is the one loaded.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::dirs::OwnedDir;
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
    /// The breaker the tier's file I/O goes through (loading or writing the compiled
    /// module, making and removing scratch directories); a [`crate::Sandbox`] gives
    /// its policy's `file_io` breaker. A disk that keeps failing is not tried again
    /// until the breaker lets a trial through.
    pub file_io_breaker: Option<crate::breaker::Breaker>,
    /// Where each run's `/scratch` is made (default: the system's temporary
    /// directory); refused unless owned by root or this user and closed to others
    /// (sticky qualifies).
    pub scratch_parent: PathBuf,
}

impl WasmConfig {
    /// `$TERRARIUM_PYTHON_WASM`, or `python-3.12.0.wasm` in `$TERRARIUM_CACHE`
    /// (default `~/.cache/terrarium`), where `scripts/setup-wasm` puts it. With
    /// neither `TERRARIUM_CACHE` nor `HOME` set there is no cache directory (never
    /// a shared one under `/tmp`): loading the module then says so.
    pub fn from_env() -> WasmConfig {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache = env("TERRARIUM_CACHE").or_else(|| env("HOME").map(|h| h.join(".cache").join("terrarium")));
        let python_wasm = env("TERRARIUM_PYTHON_WASM")
            .or_else(|| cache.as_ref().map(|c| c.join("python-3.12.0.wasm")))
            .unwrap_or_default();
        let cache_dir = cache.map(|c| c.join("compiled")).unwrap_or_default();
        WasmConfig {
            python_wasm,
            cache_dir,
            pool_size: 2,
            max_instances: 64,
            file_io_breaker: None,
            scratch_parent: std::env::temp_dir(),
        }
    }
}

fn engine_key(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Why python.wasm's compiled form cannot be loaded; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `TERRARIUM_CACHE` nor `HOME` is set.
    #[error(
        "no TERRARIUM_CACHE or HOME to find python.wasm and keep its compiled form in; set TERRARIUM_CACHE to a \
         private directory and run {SETUP}"
    )]
    NoCacheDirectory,
    /// python.wasm is not where it should be.
    #[error("python.wasm is not installed ({path}: {source}); run {SETUP} to fetch it")]
    NotInstalled {
        /// Where it was looked for.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file there is not the pinned one.
    #[error("{path} is not the pinned python.wasm ({found}); run {SETUP} to replace it")]
    NotPinned {
        /// The file.
        path: String,
        /// What it is instead (its size or its sha256).
        found: String,
    },
    /// The cache directory is refused (not this user's, open to others).
    #[error(transparent)]
    Directory(#[from] crate::dirs::DirError),
    /// Reading, compiling into or loading from the cache failed.
    #[error("cannot {doing} {path}: {message}")]
    Io {
        /// What was being done (`read`, `write`, `use the cached`, `load`).
        doing: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// wasmtime could not compile python.wasm.
    #[error("cannot compile python.wasm: {0}")]
    Compile(String),
    /// The `file_io` breaker is open after earlier failures.
    #[error("the compiled python.wasm is not read: {0}")]
    Breaker(#[from] crate::breaker::Open),
}

/// Loads python.wasm's compiled form, compiling and caching it first if needed,
/// through `config`'s `file_io` breaker when it has one.
///
/// # Errors
/// [`CacheError`], whose message names the fix: python.wasm missing or not the pinned
/// file, the cache directory unusable (not this user's, writable by others, or
/// unset), the disk failing, or the breaker open after earlier failures.
pub fn load_module(engine: &Engine, config: &WasmConfig) -> Result<Module, CacheError> {
    match &config.file_io_breaker {
        Some(b) => b.guard(|| load_unguarded(engine, config))?,
        None => load_unguarded(engine, config),
    }
}

fn load_unguarded(engine: &Engine, config: &WasmConfig) -> Result<Module, CacheError> {
    let wasm = &config.python_wasm;
    if wasm.as_os_str().is_empty() || config.cache_dir.as_os_str().is_empty() {
        return Err(CacheError::NoCacheDirectory);
    }
    let shown = |p: &Path| p.display().to_string();
    let meta = fs::metadata(wasm).map_err(|source| CacheError::NotInstalled { path: shown(wasm), source })?;
    if meta.len() != PYTHON_WASM_SIZE {
        let found = format!("{} bytes, expected {PYTHON_WASM_SIZE}", meta.len());
        return Err(CacheError::NotPinned { path: shown(wasm), found });
    }
    let dir = OwnedDir::open(&config.cache_dir, "cache directory")?;
    let name = format!("{}-{}.cwasm", &PYTHON_WASM_SHA256[..16], engine_key(engine));
    let path = shown(&dir.path().join(&name));
    let io = |doing: &'static str, message: String| CacheError::Io { doing, path: path.clone(), message };
    let file = match dir.read(&name) {
        Ok(Some(f)) => f,
        Ok(None) => {
            compile_into(engine, wasm, &dir, &name)?;
            dir.read(&name).ok().flatten().ok_or_else(|| io("read", "it vanished after compiling".into()))?
        }
        Err(e) => return Err(io("use the cached", format!("{e}; remove it"))),
    };
    // SAFETY: `file` was opened through the handle of a directory that this user
    // owns and no one else can write (every directory above it trusted too), never
    // through a link, and is a regular file of this user: only `compile_into`
    // writes there, from a python.wasm whose sha256 was checked. The handle that
    // was checked is the one loaded. wasmtime additionally checks that it was
    // compiled by a compatible engine.
    #[allow(unsafe_code, reason = "loading precompiled machine code is unsafe by nature")]
    let module = unsafe { Module::deserialize_open_file(engine, file) };
    module.map_err(|e| io("load the compiled python.wasm from", e.to_string()))
}

fn compile_into(engine: &Engine, wasm: &Path, dir: &OwnedDir, name: &str) -> Result<(), CacheError> {
    let bytes = fs::read(wasm).map_err(|e| CacheError::Io {
        doing: "read",
        path: wasm.display().to_string(),
        message: format!("{e}; run {SETUP}"),
    })?;
    let got = crate::hex::encode(&Sha256::digest(&bytes));
    if got != PYTHON_WASM_SHA256 {
        let found = format!("sha256 {got}, not the pinned {PYTHON_WASM_SHA256}");
        return Err(CacheError::NotPinned { path: wasm.display().to_string(), found });
    }
    eprintln!("terrarium: compiling python.wasm for this machine (once; it takes 10-20 s)...");
    let started = std::time::Instant::now();
    let code = engine.precompile_module(&bytes).map_err(|e| CacheError::Compile(e.to_string()))?;
    let tmp = format!(".{}.tmp", std::process::id());
    let write = || -> std::io::Result<()> {
        let mut f = dir.create_new(&tmp)?;
        f.write_all(&code)?;
        f.sync_all()?;
        dir.rename(&tmp, name)
    };
    let out = dir.path().join(name);
    write().map_err(|e| {
        let _ = dir.remove(&tmp);
        CacheError::Io { doing: "write", path: out.display().to_string(), message: e.to_string() }
    })?;
    eprintln!("terrarium: compiled in {:.1} s, cached at {}", started.elapsed().as_secs_f64(), out.display());
    Ok(())
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
            file_io_breaker: None,
            scratch_parent: PathBuf::new(),
        };
        let engine = Engine::default();
        let err = load_module(&engine, &config).expect_err("missing").to_string();
        assert!(err.contains("scripts/setup-wasm"), "{err}");
    }

    #[test]
    fn a_wrong_file_is_refused_before_compiling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = dir.path().join("python.wasm");
        fs::write(&wasm, vec![0u8; PYTHON_WASM_SIZE as usize]).expect("write");
        let config = WasmConfig {
            python_wasm: wasm,
            cache_dir: dir.path().join("c"),
            pool_size: 0,
            max_instances: 4,
            file_io_breaker: None,
            scratch_parent: PathBuf::new(),
        };
        let err = load_module(&Engine::default(), &config).expect_err("wrong file").to_string();
        assert!(err.contains("sha256") && err.contains("scripts/setup-wasm"), "{err}");
    }

    #[test]
    fn a_shared_cache_directory_is_refused_before_anything_is_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("c");
        fs::create_dir(&cache).expect("cache");
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).expect("chmod");
        let wasm = dir.path().join("python.wasm");
        fs::write(&wasm, vec![0u8; PYTHON_WASM_SIZE as usize]).expect("write");
        let config = WasmConfig {
            python_wasm: wasm,
            cache_dir: cache,
            pool_size: 0,
            max_instances: 4,
            file_io_breaker: None,
            scratch_parent: PathBuf::new(),
        };
        let err = load_module(&Engine::default(), &config).expect_err("shared").to_string();
        assert!(err.contains("cache directory") && err.contains("writable by other users"), "{err}");
    }

    /// The `file_io` breaker: loads that fail open it, and while it is open the
    /// disk is not tried (a python.wasm installed meanwhile is not even looked at).
    #[test]
    fn failed_loads_open_the_file_io_breaker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = crate::breaker::Settings {
            failure_threshold: 2,
            recovery_timeout: std::time::Duration::from_secs(600),
            log_failures: false,
        };
        let breaker = crate::breaker::Breaker::new("file_io", settings);
        let config = WasmConfig {
            python_wasm: dir.path().join("python.wasm"),
            cache_dir: dir.path().join("c"),
            pool_size: 0,
            max_instances: 4,
            file_io_breaker: Some(breaker.clone()),
            scratch_parent: PathBuf::new(),
        };
        for _ in 0..2 {
            let err = load_module(&Engine::default(), &config).expect_err("not installed");
            assert!(matches!(err, CacheError::NotInstalled { .. }), "{err}");
        }
        assert_eq!(breaker.snapshot().state, crate::breaker::State::Open);
        fs::write(&config.python_wasm, b"not read").expect("write");
        let err = load_module(&Engine::default(), &config).expect_err("breaker open");
        assert!(matches!(err, CacheError::Breaker(_)) && err.to_string().contains("file_io"), "{err}");
        assert_eq!(breaker.snapshot().total_failures, 2, "refused at once: the file was not tried");
    }

    #[test]
    fn without_a_cache_directory_nothing_falls_back_to_tmp() {
        let config = WasmConfig {
            python_wasm: PathBuf::new(),
            cache_dir: PathBuf::new(),
            pool_size: 0,
            max_instances: 4,
            file_io_breaker: None,
            scratch_parent: PathBuf::new(),
        };
        let err = load_module(&Engine::default(), &config).expect_err("no cache").to_string();
        assert!(err.contains("TERRARIUM_CACHE"), "{err}");
    }
}
