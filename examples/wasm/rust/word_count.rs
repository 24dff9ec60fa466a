//! A WASM tool in Rust (std only, no crates): counts the words, lines and characters
//! of `{"text": "..."}` and answers `{"words": N, "lines": N, "chars": N}`.
//!
//! ABI (WASI preview 1): the arguments as JSON on stdin, the result on stdout, exit 0;
//! bad arguments: a message on stderr and on stdout, exit 2.
//! Build: rustc --target wasm32-wasi -O --edition 2021 word_count.rs -o word_count.wasm
//! (Debian's rustc + libstd-rust-dev-wasm32; newer toolchains call it wasm32-wasip1).

use std::io::{self, Read, Write};
use std::process::exit;

/// The string value of `key` in a flat JSON object, unescaped; None if absent or not a string.
fn string_field(json: &str, key: &str) -> Option<String> {
    let bytes = json.as_bytes();
    let mut i = 0;
    let mut depth = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let (text, end) = read_string(json, i)?;
                i = end;
                let mut j = i;
                while j < bytes.len() && (bytes[j] as char).is_ascii_whitespace() {
                    j += 1;
                }
                if depth == 1 && text == key && j < bytes.len() && bytes[j] == b':' {
                    j += 1;
                    while j < bytes.len() && (bytes[j] as char).is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j] == b'"' {
                        return read_string(json, j).map(|(value, _)| value);
                    }
                    return None;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The JSON string starting at `start` (a quote), unescaped, and the index after it.
fn read_string(json: &str, start: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = json[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        match c {
            '"' => return Some((out, start + 1 + offset + 1)),
            '\\' => {
                let (_, escaped) = chars.next()?;
                match escaped {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    None
}

fn main() {
    let mut input = String::new();
    if io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("stdin is not UTF-8 text");
        exit(2);
    }
    let text = match string_field(&input, "text") {
        Some(text) => text,
        None => {
            eprintln!("expected {{\"text\": \"...\"}}");
            print!("{{\"error\":\"expected a string argument 'text'\"}}");
            exit(2);
        }
    };
    let words = text.split_whitespace().count();
    let lines = if text.is_empty() { 0 } else { text.lines().count() };
    let chars = text.chars().count();
    let mut stdout = io::stdout();
    let _ = write!(stdout, "{{\"words\":{},\"lines\":{},\"chars\":{}}}", words, lines, chars);
}
