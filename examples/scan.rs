//! A leak scanner for files, folders or standard input: reports every
//! `tm_live_`/`tm_test_` key (checksum-valid, so look-alikes are skipped)
//! by place, environment and hint, never the key. Exit status 1 when a live
//! key is found, 2 when something could not be read, 0 otherwise — usable as
//! a pre-commit hook (see the README).
//!
//! ```text
//! cargo run --features client --example scan -- src config.toml
//! git diff --cached | cargo run --features client --example scan -- -
//! ```
//!
//! Folders are walked recursively, skipping `.git`, `target` and
//! `node_modules`; symbolic links are not followed. Files are read through
//! one fixed buffer, so size does not matter.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use tm_auth::scan::{scan_reader, Finding};
use tm_auth::Environment;

#[derive(Default)]
struct Tally {
    live: usize,
    test: usize,
    unreadable: usize,
}

fn main() -> ExitCode {
    let mut paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        paths.push(".".to_owned());
    }
    let mut tally = Tally::default();
    for path in &paths {
        if path == "-" {
            scan_stream("<stdin>", io::stdin().lock(), None, &mut tally);
        } else {
            walk(Path::new(path), &mut tally);
        }
    }
    eprintln!(
        "{} live key(s), {} test key(s) found",
        tally.live, tally.test
    );
    if tally.live > 0 {
        eprintln!(
            "revoke each live key found (its hint identifies it) and remove it from the file"
        );
        ExitCode::FAILURE
    } else if tally.unreadable > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn walk(path: &Path, tally: &mut Tally) {
    let kind = match path.symlink_metadata() {
        Ok(meta) => meta.file_type(),
        Err(err) => return unreadable(path, &err, tally),
    };
    if kind.is_dir() {
        let skip = path.file_name().is_some_and(|name| {
            [".git", "target", "node_modules"].contains(&name.to_string_lossy().as_ref())
        });
        if skip {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(err) => return unreadable(path, &err, tally),
        };
        let mut children: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        children.sort();
        for child in children {
            walk(&child, tally);
        }
    } else if kind.is_file() {
        match File::open(path) {
            Ok(file) => scan_stream(&path.display().to_string(), file, Some(path), tally),
            Err(err) => unreadable(path, &err, tally),
        }
    }
}

fn scan_stream(name: &str, reader: impl Read, path: Option<&Path>, tally: &mut Tally) {
    for finding in scan_reader(reader) {
        match finding {
            Ok(finding) => report(name, &finding, path, tally),
            Err(err) => {
                eprintln!("{name}: could not be read to the end: {err}");
                tally.unreadable += 1;
                return;
            }
        }
    }
}

fn report(name: &str, finding: &Finding, path: Option<&Path>, tally: &mut Tally) {
    let place = match path.and_then(|path| line_and_column(path, finding.offset).ok()) {
        Some((line, column)) => format!("{name}:{line}:{column}"),
        None => format!("{name}: byte {}", finding.offset),
    };
    let kind = match finding.environment {
        Environment::Live => {
            tally.live += 1;
            "LIVE key"
        }
        Environment::Test => {
            tally.test += 1;
            "test key"
        }
    };
    println!("{place}: {kind} {}", finding.hint);
}

/// Counts lines up to `offset` with a fixed buffer (1-based line and column).
fn line_and_column(path: &Path, offset: usize) -> io::Result<(usize, usize)> {
    let mut reader = BufReader::new(File::open(path)?);
    let (mut line, mut line_start, mut at) = (1, 0, 0);
    let mut buffer = [0u8; 8192];
    while at < offset {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        for (i, &b) in buffer[..n.min(offset - at)].iter().enumerate() {
            if b == b'\n' {
                line += 1;
                line_start = at + i + 1;
            }
        }
        at += n;
    }
    Ok((line, offset - line_start + 1))
}

fn unreadable(path: &Path, err: &io::Error, tally: &mut Tally) {
    eprintln!("{}: could not be read: {err}", path.display());
    tally.unreadable += 1;
}
