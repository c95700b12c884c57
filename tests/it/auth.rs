//! `laminar auth dropbox` and `laminar auth drive` against the emulators on loopback:
//! the command prints the authorize URL, the test plays the user's browser (a GET of
//! that URL at the emulator's consent page, which approves at once), pastes the code or
//! the address back (with `--code`, or on standard input), and takes the printed block
//! into a laminar.toml whose relay must then succeed, byte for byte at the store. A
//! reused code and a code from another authorization (a wrong PKCE verifier) must end
//! in one clear line, print no block, and leak neither the code nor a secret.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
use laminar_tests::laminar_bin;

/// A small tree to relay with the new token.
fn tree() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(11);
    vec![
        ("a.txt", b"authorized\n".to_vec()),
        ("sub/b.bin", (0..70_001).map(|_| rng.u8(..)).collect()),
        ("empty", Vec::new()),
    ]
}

fn write_tree(root: &Path) {
    for (rel, bytes) in tree() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
}

fn log(what: &str, out: &Output) {
    eprintln!(
        "{what} -> {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `laminar ARGS` with its own data directory (where the pending verifier is kept),
/// standard input closed, and `envs` set.
fn laminar(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let out = Command::new(laminar_bin())
        .args(args)
        .env("LAMINAR_DATA_DIR", data_dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run laminar");
    log(&format!("laminar {}", args.join(" ")), &out);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The authorize URL the command printed (on stderr, indented on a line of its own).
fn printed_url(text: &str) -> String {
    text.lines().map(str::trim).find(|l| l.starts_with("http://")).expect("an authorize URL on stderr").to_string()
}

/// Plays the browser: GETs the consent page and returns the redirect's address, or the
/// page's text (Dropbox without a redirect shows the code).
fn consent(url: &str) -> String {
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let resp = http.get(url).send().expect("the consent page answers");
    let status = resp.status().as_u16();
    match resp.headers().get("location") {
        Some(to) => {
            assert_eq!(status, 302);
            to.to_str().expect("an ASCII location").to_string()
        }
        None => {
            assert_eq!(status, 200, "the consent page approved");
            resp.text().expect("the code")
        }
    }
}

/// The URL with its `code_challenge` swapped for one of another verifier.
fn other_challenge(url: &str) -> String {
    let (head, rest) = url.split_once("code_challenge=").expect("a challenge");
    let tail = rest.split_once('&').map_or(String::new(), |(_, t)| format!("&{t}"));
    // The S256 challenge of 43 'x's, a verifier this test never gives laminar.
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest([b'x'; 43]);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    format!("{head}code_challenge={challenge}{tail}")
}

/// A failed exchange: one line on stderr saying `needle`, no block, none of `secrets`.
fn assert_refused(out: &Output, needle: &str, secrets: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stdout(out).is_empty(), "no block is printed: {}", stdout(out));
    let err = stderr(out);
    let line = err.lines().find(|l| l.starts_with("laminar: error: ")).expect("an error line");
    assert!(line.contains(needle), "{line:?} says {needle:?}");
    for s in secrets {
        assert!(!err.contains(s), "stderr leaks a secret or the code");
    }
}

#[test]
fn dropbox_code_to_a_working_remote() {
    let emu = DropboxEmulator::start(DropboxOptions { seed: 21, ..DropboxOptions::default() }).expect("emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (authorize_url, token_url) = (emu.authorize_url(), emu.token_url());
    let begin = [
        "auth",
        "dropbox",
        "--app-key",
        emu.app_key(),
        "--remote",
        "dbx",
        "--authorize-url",
        &authorize_url,
        "--token-url",
        &token_url,
    ];
    let with_code = |code: &str| {
        let mut args = begin.to_vec();
        args.extend(["--code", code]);
        laminar(&data, &args, &[])
    };

    // The first run prints the URL, keeps the verifier, and ends when stdin does.
    let first = laminar(&data, &begin, &[]);
    assert_eq!(first.status.code(), Some(0));
    assert!(stdout(&first).is_empty());
    let url = printed_url(&stderr(&first));
    for part in ["response_type=code", "token_access_type=offline", "code_challenge_method=S256", "code_challenge="] {
        assert!(url.contains(part), "{part} in {url}");
    }

    // A code for another challenge: the verifier does not match. The authorization
    // stays pending, so the right code still works after it.
    let stray = consent(&other_challenge(&url));
    let wrong = with_code(&stray);
    assert_refused(&wrong, "another authorization", &[&stray, emu.app_secret()]);

    let code = consent(&url);
    let done = with_code(&code);
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    let block = stdout(&done);
    assert!(block.contains("[remotes.dbx]\ntype = \"dropbox\"\n"), "{block}");
    assert!(block.contains(&format!("token_url = {token_url:?}")), "{block}");
    assert!(!block.contains(emu.app_secret()) && !block.contains("app_secret"), "PKCE needs no secret: {block}");
    assert!(!stderr(&done).contains(&code), "the code is not echoed");

    // The block, pasted into laminar.toml with the emulator's hosts, relays a tree.
    let src = dir.path().join("src");
    write_tree(&src);
    let config = dir.path().join("laminar.toml");
    std::fs::write(
        &config,
        format!("{block}api_url = {:?}\ncontent_url = {:?}\nroot = \"/From auth\"\n", emu.api_url(), emu.content_url()),
    )
    .expect("laminar.toml");
    let config_arg = config.display().to_string();
    let src_url = format!("file://{}", src.display());
    let relay = laminar(&data, &["--config", &config_arg, "relay", &src_url, "dbx:up", "--json"], &[]);
    assert_eq!(relay.status.code(), Some(0), "{}", stderr(&relay));
    for (rel, bytes) in tree() {
        assert_eq!(emu.file(&format!("/From auth/up/{rel}")).as_deref(), Some(&bytes[..]), "{rel} at Dropbox");
    }
    let stats = emu.stats();
    assert!(stats.requests.get("oauth2/token").is_some_and(|&n| n >= 3), "the relay refreshed: {stats:?}");

    // The code was used: a new authorization with it is refused by Dropbox.
    assert_eq!(laminar(&data, &begin, &[]).status.code(), Some(0));
    let reused = with_code(&code);
    assert_refused(&reused, "works once", &[&code]);
    assert!(stderr(&reused).contains("code doesn't exist or has expired"), "Dropbox's words are quoted");
}

/// Runs `laminar auth drive ARGS` as a user would: reads the URL it prints, plays the
/// browser, and pastes the address it ended on into standard input.
fn drive_interactive(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> (Output, String) {
    let mut child = Command::new(laminar_bin())
        .args(args)
        .env("LAMINAR_DATA_DIR", data)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run laminar");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).expect("read stderr") > 0, "laminar ended before a URL: {seen}");
        seen.push_str(&line);
        if line.trim().starts_with("http://") {
            break line.trim().to_string();
        }
    };
    let address = consent(&url);
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{address}").expect("paste the address");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).expect("read stderr");
    let mut out = child.wait_with_output().expect("laminar ran");
    out.stderr = format!("{seen}{rest}").into_bytes();
    log(&format!("laminar {} (pasting {address})", args.join(" ")), &out);
    (out, url)
}

#[test]
fn drive_address_to_a_working_remote() {
    let emu = DriveEmulator::start(DriveOptions::default()).expect("emulator");
    let e = emu.endpoints();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let secret_env = [("LAMINAR_TEST_DRIVE_SECRET", e.client_secret.as_str())];
    let begin = [
        "auth",
        "drive",
        "--client-id",
        &e.client_id,
        "--client-secret-env",
        "LAMINAR_TEST_DRIVE_SECRET",
        "--remote",
        "gd",
        "--authorize-url",
        &e.authorize_url,
        "--token-url",
        &e.token_url,
    ];

    // Interactive: the whole address the browser ended on, pasted into stdin.
    let (done, url) = drive_interactive(&data, &begin, &secret_env);
    for part in [
        "access_type=offline",
        "prompt=consent",
        "code_challenge_method=S256",
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A",
    ] {
        assert!(url.contains(part), "{part} in {url}");
    }
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    let block = stdout(&done);
    assert!(block.contains("[remotes.gd]\ntype = \"drive\"\n"), "{block}");
    assert!(block.contains("client_secret_env = \"LAMINAR_TEST_DRIVE_SECRET\""), "{block}");
    assert!(!block.contains(&e.client_secret), "a secret given by variable is named, not printed");
    assert!(!stderr(&done).contains(&e.client_secret));

    let src = dir.path().join("src");
    write_tree(&src);
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, format!("{block}api_url = {:?}\n", e.api_url)).expect("laminar.toml");
    let config_arg = config.display().to_string();
    let src_url = format!("file://{}", src.display());
    let relay = laminar(&data, &["--config", &config_arg, "relay", &src_url, "gd:From auth", "--json"], &secret_env);
    assert_eq!(relay.status.code(), Some(0), "{}", stderr(&relay));
    for (rel, bytes) in tree() {
        assert_eq!(emu.read(&format!("From auth/{rel}")).as_deref(), Some(&bytes[..]), "{rel} at Drive");
    }
    let stats = emu.stats();
    assert_eq!(stats.code_grants, 1, "{stats:?}");
    assert!(stats.refresh_grants >= 1, "the relay refreshed the new token: {stats:?}");

    // Non-interactive, with --code: a code for another challenge is refused; the right
    // one, pasted as a bare code, works after it.
    let with_code = |code: &str| {
        let mut args = begin.to_vec();
        args.extend(["--code", code]);
        laminar(&data, &args, &secret_env)
    };
    let first = laminar(&data, &begin, &secret_env);
    assert_eq!(first.status.code(), Some(0));
    let url = printed_url(&stderr(&first));
    let stray_address = consent(&other_challenge(&url));
    let stray = code_in(&stray_address);
    let wrong = with_code(&stray);
    assert_refused(&wrong, "another authorization", &[&stray, &e.client_secret]);
    assert!(stderr(&wrong).contains("Invalid code verifier."), "Google's words are quoted");
    let code = code_in(&consent(&url));
    let ok = with_code(&code);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("refresh_token = \"1//"), "{}", stdout(&ok));

    // Reused: Google's invalid_grant "Bad Request".
    assert_eq!(laminar(&data, &begin, &secret_env).status.code(), Some(0));
    let reused = with_code(&code);
    assert_refused(&reused, "works once", &[&code, &e.client_secret]);

    // An address from an earlier authorization is caught by its state, before Google.
    let before = emu.stats().refused_grants;
    let stale = with_code(&stray_address);
    assert_eq!(stale.status.code(), Some(2));
    assert!(stderr(&stale).contains("another authorization"), "{}", stderr(&stale));
    assert_eq!(emu.stats().refused_grants, before, "nothing was sent");
}

/// The `code` value of an address, percent-decoded (Google's codes hold a `/`).
fn code_in(address: &str) -> String {
    let query = address.split_once('?').expect("a query").1;
    let raw = query.split('&').find_map(|p| p.strip_prefix("code=")).expect("a code");
    raw.replace("%2F", "/")
}
