//! Encryption at rest: what Terrarium keeps of its users' work (snippet text,
//! outputs and everything else an audit event says about a run, approval subjects,
//! decisions' notes and outcomes, the stored contents of workspace versions),
//! sealed under a key the operator provides.
//!
//! The key is 32 random bytes written as 64 hex digits, read from the file named by
//! `$TERRARIUM_DATA_KEY_FILE` (a regular file of this user, closed to others) or
//! from `$TERRARIUM_DATA_KEY` itself; never from a policy. `terrarium data-key new
//! FILE` makes one. Values are sealed with XChaCha20-Poly1305 (an AEAD), a random
//! 192-bit nonce each; a sealed value names its key by id (the first 8 bytes of a
//! SHA-256 of the key, which reveals nothing of it) and is bound to where it is
//! stored by its associated data (an event's id, a text's hash, an approval's id
//! and column, an object's hash): moved elsewhere, it does not open. Large values
//! (workspace objects) are sealed in 64 KiB chunks, each numbered and the last one
//! marked, so a file cut short, reordered or extended does not open either.
//!
//! Stores remember the id of the key they are sealed under (see
//! `audit::sealing` and `workspace::Workspaces::open`).
//!
//! # Invariant
//! With a key configured, nothing listed above is written in the clear. A store
//! sealed under a key is refused, with the key ids named, when no key or another
//! key is given: nothing is ever written in the clear beside sealed data, and a
//! value that does not open is an error, never shown as it is.

use std::io::{self, Read, Write};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The file holding the data key.
pub const KEY_FILE_ENV: &str = "TERRARIUM_DATA_KEY_FILE";
/// The data key itself (64 hex digits), when no file is named.
pub const KEY_ENV: &str = "TERRARIUM_DATA_KEY";

/// The first byte of a sealed value: its format.
const VERSION: u8 = 1;
/// The first bytes of a sealed stream.
const STREAM_MAGIC: &[u8; 8] = b"TRSEAL\x01\n";
/// Plaintext bytes per chunk of a sealed stream.
const CHUNK: usize = 64 * 1024;
/// Bytes a seal adds to each chunk (the Poly1305 tag).
const TAG: usize = 16;
/// Random bytes of a stream's nonce (the rest: the chunk's number and last mark).
const PREFIX: usize = 19;

/// Why a key could not be had, or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The configured key cannot be read or is not a key.
    #[error("data key {source_name}: {message}")]
    Key {
        /// Where it was looked for (the variable, or the file's path).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The value is sealed under a key that is not the one given.
    #[error(
        "sealed under data key {sealed}, but {}",
        have.as_deref().map_or_else(|| format!("no data key is set ({KEY_FILE_ENV} or {KEY_ENV})"), |h| format!("the data key given is {h}"))
    )]
    WrongKey {
        /// The id of the key it is sealed under.
        sealed: String,
        /// The id of the key given, if any.
        have: Option<String>,
    },
    /// The value does not open under its key: changed, cut, or moved from
    /// elsewhere.
    #[error("a sealed value does not open under its key (changed, cut short, or moved from elsewhere)")]
    Tampered,
    /// Not a sealed value of a format this version knows.
    #[error("not a sealed value this version can read")]
    Malformed,
}

impl From<SealError> for io::Error {
    fn from(e: SealError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A data key, loaded.
#[derive(Clone)]
pub struct DataKey {
    id: [u8; 8],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl DataKey {
    /// The key configured for this process: the file `$TERRARIUM_DATA_KEY_FILE`,
    /// else `$TERRARIUM_DATA_KEY`, else none (`Ok(None)`: nothing is sealed).
    ///
    /// # Errors
    /// Both are set, or the one set does not hold a key (see [`DataKey::from_file`]).
    pub fn from_env() -> Result<Option<DataKey>, SealError> {
        let file = std::env::var_os(KEY_FILE_ENV).filter(|v| !v.is_empty());
        let text = std::env::var_os(KEY_ENV).filter(|v| !v.is_empty());
        match (file, text) {
            (Some(_), Some(_)) => Err(SealError::Key {
                source_name: format!("{KEY_FILE_ENV} and {KEY_ENV}"),
                message: "both are set; set one".into(),
            }),
            (Some(f), None) => DataKey::from_file(Path::new(&f)).map(Some),
            (None, Some(t)) => {
                let t = t
                    .into_string()
                    .map_err(|_| SealError::Key { source_name: KEY_ENV.into(), message: "not 64 hex digits".into() })?;
                DataKey::from_hex(&t)
                    .map(Some)
                    .map_err(|message| SealError::Key { source_name: KEY_ENV.into(), message })
            }
            (None, None) => Ok(None),
        }
    }

    /// The key in `path`: a regular file of this user, readable by nobody else,
    /// holding 64 hex digits.
    ///
    /// # Errors
    /// It cannot be read, is a link, is another user's or open to others, or holds
    /// something else.
    pub fn from_file(path: &Path) -> Result<DataKey, SealError> {
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        // A key given where its file's path belongs (whole, quoted, cut, with a
        // prefix, in groups) is not repeated in an error: a path with a long run
        // of hex digits, separators aside, is never echoed.
        let joined: String =
            path.to_string_lossy().chars().filter(|c| !matches!(c, ':' | '-' | '_' | ' ' | '.' | ',')).collect();
        let longest_hex = joined.split(|c: char| !c.is_ascii_hexdigit()).map(str::len).max().unwrap_or(0);
        if longest_hex >= 32 {
            return Err(SealError::Key {
                source_name: "the key file's path".into(),
                message: format!(
                    "it looks like a key, not a path, and is not repeated (a key itself goes in {KEY_ENV}; a file's \
                     name must not hold 32 hex digits in a row)"
                ),
            });
        }
        let err = |message: String| SealError::Key { source_name: path.display().to_string(), message };
        // Non-blocking: a FIFO in its place is refused, not waited on.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| err(format!("cannot open it: {e}")))?;
        let meta = f.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let me = crate::dirs::euid();
        if meta.uid() != me {
            return Err(err(format!("owned by uid {}, not by this user (uid {me})", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!("readable by others (mode {:o}); chmod 600 it", meta.mode() & 0o777)));
        }
        let mut text = String::new();
        Read::by_ref(&mut f).take(4096).read_to_string(&mut text).map_err(|_| err("not 64 hex digits".into()))?;
        DataKey::from_hex(&text).map_err(err)
    }

    /// The key written as `text` (64 hex digits, surrounding space ignored).
    ///
    /// # Errors
    /// Anything else, said without repeating the text.
    pub fn from_hex(text: &str) -> Result<DataKey, String> {
        let key: [u8; 32] = crate::hex::decode(text.trim())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| "not a data key (64 hex digits expected)".to_string())?;
        Ok(DataKey::from_bytes(&key))
    }

    fn from_bytes(key: &[u8; 32]) -> DataKey {
        let digest = Sha256::new().chain_update(b"terrarium data key id\0").chain_update(key).finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        DataKey { id, cipher: XChaCha20Poly1305::new(key.into()) }
    }

    /// A new random key, as the 64 hex digits a key file holds.
    ///
    /// # Errors
    /// The system has no randomness to give.
    pub fn generate() -> Result<String, String> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("no randomness for a new key: {e}"))?;
        Ok(crate::hex::encode(&key))
    }

    /// The key's id (16 hex digits): what stores and sealed values name it by.
    pub fn id(&self) -> String {
        crate::hex::encode(&self.id)
    }

    /// `plain` sealed, bound to `context` (it opens only with the same context).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        // Without randomness there is no safe nonce: refuse rather than repeat one.
        #[allow(clippy::expect_used, reason = "getrandom fails only without an entropy source, which no run survives")]
        getrandom::getrandom(&mut nonce).expect("the system's randomness");
        #[allow(clippy::expect_used, reason = "sealing a slice in memory cannot fail below 256 GiB")]
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: context.as_bytes() })
            .expect("encryption in memory");
        let mut out = Vec::with_capacity(1 + 8 + 24 + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// What [`DataKey::seal`] sealed under `context`.
    ///
    /// # Errors
    /// [`SealError::WrongKey`] when sealed under another key, [`SealError::Tampered`]
    /// when it does not open, [`SealError::Malformed`] when it is no sealed value.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let id = key_id_of(sealed).ok_or(SealError::Malformed)?;
        if id != self.id() {
            return Err(SealError::WrongKey { sealed: id, have: Some(self.id()) });
        }
        let (nonce, body) = sealed[9..].split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: context.as_bytes() })
            .map_err(|_| SealError::Tampered)
    }

    /// A writer that seals what is written to it into `out`, bound to `context`;
    /// [`SealWriter::finish`] ends the stream (without it, it does not open).
    ///
    /// # Errors
    /// The header cannot be written, or the system has no randomness.
    pub fn seal_writer<W: Write>(&self, context: &str, mut out: W) -> io::Result<SealWriter<W>> {
        let mut prefix = [0u8; PREFIX];
        getrandom::getrandom(&mut prefix).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        out.write_all(STREAM_MAGIC)?;
        out.write_all(&self.id)?;
        out.write_all(&prefix)?;
        Ok(SealWriter { key: self.clone(), context: context.into(), prefix, counter: 0, buf: Vec::new(), out })
    }

    /// A reader of what [`DataKey::seal_writer`] sealed in `input` under `context`.
    /// Reading fails (`InvalidData`) where the stream does not open.
    ///
    /// # Errors
    /// The header cannot be read, or names another key.
    pub fn open_reader<R: Read>(&self, context: &str, mut input: R) -> io::Result<OpenReader<R>> {
        let mut header = [0u8; 8 + 8 + PREFIX];
        input.read_exact(&mut header).map_err(|_| SealError::Malformed)?;
        if &header[..8] != STREAM_MAGIC {
            return Err(SealError::Malformed.into());
        }
        if header[8..16] != self.id {
            return Err(
                SealError::WrongKey { sealed: crate::hex::encode(&header[8..16]), have: Some(self.id()) }.into()
            );
        }
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[16..]);
        Ok(OpenReader {
            key: self.clone(),
            context: context.into(),
            prefix,
            counter: 0,
            plain: Vec::new(),
            at: 0,
            done: false,
            input,
        })
    }

    fn chunk_nonce(prefix: &[u8; PREFIX], counter: u32, last: bool) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        nonce[..PREFIX].copy_from_slice(prefix);
        nonce[PREFIX..PREFIX + 4].copy_from_slice(&counter.to_be_bytes());
        nonce[23] = u8::from(last);
        nonce
    }
}

/// The id (16 hex digits) of the key `sealed` (a value of [`DataKey::seal`]) is
/// sealed under, if it is such a value.
pub fn key_id_of(sealed: &[u8]) -> Option<String> {
    (sealed.len() >= 1 + 8 + 24 + TAG && sealed[0] == VERSION).then(|| crate::hex::encode(&sealed[1..9]))
}

/// The id of the key a sealed stream (read from its first bytes) is sealed under.
///
/// # Errors
/// It cannot be read, or is no sealed stream.
pub fn stream_key_id(mut input: impl Read) -> io::Result<String> {
    let mut header = [0u8; 16];
    input.read_exact(&mut header).map_err(|_| SealError::Malformed)?;
    if &header[..8] != STREAM_MAGIC {
        return Err(SealError::Malformed.into());
    }
    Ok(crate::hex::encode(&header[8..16]))
}

/// Seals a stream (see [`DataKey::seal_writer`]).
pub struct SealWriter<W: Write> {
    key: DataKey,
    context: String,
    prefix: [u8; PREFIX],
    counter: u32,
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> SealWriter<W> {
    fn emit(&mut self, len: usize, last: bool) -> io::Result<()> {
        let nonce = DataKey::chunk_nonce(&self.prefix, self.counter, last);
        let sealed = self
            .key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &self.buf[..len], aad: self.context.as_bytes() })
            .map_err(|_| io::Error::other("cannot seal a chunk"))?;
        self.out.write_all(&sealed)?;
        self.buf.drain(..len);
        self.counter = self.counter.checked_add(1).ok_or_else(|| io::Error::other("stream too long to seal"))?;
        Ok(())
    }

    /// Ends the stream (a full last chunk is followed by an empty one marked
    /// last: a chunk is last exactly when it is short), and hands back the writer.
    ///
    /// # Errors
    /// Writing failed.
    pub fn finish(mut self) -> io::Result<W> {
        if self.buf.len() == CHUNK {
            self.emit(CHUNK, false)?;
        }
        let len = self.buf.len();
        self.emit(len, true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        // A full chunk is sealed only once more follows: the last one is short.
        while self.buf.len() > CHUNK {
            self.emit(CHUNK, false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Opens a sealed stream (see [`DataKey::open_reader`]).
pub struct OpenReader<R: Read> {
    key: DataKey,
    context: String,
    prefix: [u8; PREFIX],
    counter: u32,
    plain: Vec<u8>,
    at: usize,
    done: bool,
    input: R,
}

impl<R: Read> OpenReader<R> {
    fn next_chunk(&mut self) -> io::Result<()> {
        let mut sealed = vec![0u8; CHUNK + TAG];
        let mut got = 0;
        while got < sealed.len() {
            match self.input.read(&mut sealed[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let last = got < CHUNK + TAG;
        let nonce = DataKey::chunk_nonce(&self.prefix, self.counter, last);
        self.plain = self
            .key
            .cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed[..got], aad: self.context.as_bytes() })
            .map_err(|_| SealError::Tampered)?;
        self.at = 0;
        self.counter = self.counter.checked_add(1).ok_or(SealError::Malformed)?;
        if last {
            // Nothing may follow the last chunk.
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(SealError::Tampered.into());
            }
            self.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::from_bytes(&[byte; 32])
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_context() {
        let (k, other) = (key(1), key(2));
        let sealed = k.seal("code:abc", b"print('secret')");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plaintext in the sealed value");
        assert_eq!(k.open("code:abc", &sealed).expect("opens"), b"print('secret')");
        assert!(matches!(k.open("code:abd", &sealed), Err(SealError::Tampered)), "moved elsewhere");
        assert!(matches!(other.open("code:abc", &sealed), Err(SealError::WrongKey { .. })));
        let mut flipped = sealed.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert!(matches!(k.open("code:abc", &flipped), Err(SealError::Tampered)));
        assert!(matches!(k.open("code:abc", b"plain text"), Err(SealError::Malformed)));
        assert_ne!(k.seal("c", b"x"), k.seal("c", b"x"), "a fresh nonce each time");
        assert_eq!(key_id_of(&sealed), Some(k.id()));
    }

    fn seal_stream(k: &DataKey, plain: &[u8]) -> Vec<u8> {
        let mut w = k.seal_writer("obj", Vec::new()).expect("writer");
        for part in plain.chunks(10_000) {
            w.write_all(part).expect("write");
        }
        w.finish().expect("finish")
    }

    fn open_stream(k: &DataKey, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        k.open_reader("obj", sealed)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_stream_opens_whole_and_refuses_a_cut_a_reorder_or_an_extension() {
        let k = key(3);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal_stream(&k, &plain);
            assert_eq!(open_stream(&k, &sealed).expect("opens"), plain, "length {len}");
            if len >= CHUNK {
                // Cut at a chunk boundary: the last chunk is missing.
                let cut = 8 + 8 + PREFIX + CHUNK + TAG;
                assert!(open_stream(&k, &sealed[..cut]).is_err(), "cut at a boundary, length {len}");
            }
            assert!(open_stream(&k, &sealed[..sealed.len() - 1]).is_err(), "cut short, length {len}");
            let mut longer = sealed.clone();
            longer.push(0);
            assert!(open_stream(&k, &longer).is_err(), "extended, length {len}");
        }
        let plain = vec![7u8; 2 * CHUNK + 5];
        let sealed = seal_stream(&k, &plain);
        let h = 8 + 8 + PREFIX;
        let mut swapped = sealed[..h].to_vec();
        swapped.extend_from_slice(&sealed[h + CHUNK + TAG..h + 2 * (CHUNK + TAG)]);
        swapped.extend_from_slice(&sealed[h..h + CHUNK + TAG]);
        swapped.extend_from_slice(&sealed[h + 2 * (CHUNK + TAG)..]);
        assert!(open_stream(&k, &swapped).is_err(), "chunks reordered");
        assert!(open_stream(&key(4), &sealed).is_err(), "another key");
        let mut other = Vec::new();
        assert!(k.open_reader("elsewhere", &sealed[..]).expect("header").read_to_end(&mut other).is_err());
        assert_eq!(stream_key_id(&sealed[..]).expect("id"), k.id());
    }

    #[test]
    fn a_key_is_64_hex_digits_and_never_repeated_in_errors() {
        assert!(DataKey::from_hex(&"ab".repeat(32)).is_ok());
        for bad in ["", "zz", &"ab".repeat(31), &"g".repeat(64)] {
            let e = DataKey::from_hex(bad).expect_err("refused");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(format!("{:?}", key(1)), format!("DataKey({})", key(1).id()));
    }
}
