//! The dashboard driven as an operator drives it: headless Chromium loads the page a
//! running `laminar serve` serves, and the test types into its fields and clicks its
//! buttons with real mouse events, then checks through the API (and the stores) that
//! each click did what it says. A job goes through its whole life this way: submitted,
//! paused, resumed, scaled, finished, verified; a dry run and a cancel besides; and, on
//! an appliance with a token, the page asks for it and acts once it is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::appliance::{load, Appliance, SETTLE_TIMEOUT};
use laminar_tests::browser::Browser;
use laminar_tests::{clouds, Clouds};
use serde_json::json;

const KIB: usize = 1024;
/// A token long enough for the appliance.
const TOKEN: &str = "s3cr3t-0123456789abcdef0123456789abcdef";

/// Chromium, or None (the test is skipped with a note) when it is not installed and
/// servers are not required.
fn chromium() -> Option<PathBuf> {
    let found = find_tool("chromium").or_else(|| find_tool("chromium-browser"));
    if found.is_none() {
        assert!(!require_servers(), "chromium not installed (tests/run.sh installs it)");
        eprintln!("skipping: chromium not installed (tests/run.sh installs it)");
    }
    found
}

/// A JavaScript expression for the job's row, or for `what` inside it.
fn row(id: &str, what: &str) -> String {
    format!("document.querySelector('tr.job[data-id=\"{id}\"] {what}')")
}

/// The selector of the button for `action` in the job's row.
fn button(id: &str, action: &str) -> String {
    format!("tr.job[data-id=\"{id}\"] button[data-action=\"{action}\"]")
}

/// Waits until the job's row shows the button for `action`, then clicks it.
fn click_action(b: &mut Browser, id: &str, action: &str) {
    let shown = format!("{0} && !{0}.closest('[hidden]')", row(id, &format!("button[data-action=\"{action}\"]")));
    b.wait_for(&shown, SETTLE_TIMEOUT).unwrap();
    b.click(&button(id, action)).unwrap();
}

/// Fills the submit form with `fields` (name, value: an empty value empties the field),
/// sets its dry-run box to `dry_run`, clicks Submit, and returns the id the page says
/// it submitted.
fn submit(b: &mut Browser, fields: &[(&str, &str)], dry_run: bool) -> String {
    let before = b.eval("document.getElementById('submit-result').dataset.jobId || ''").unwrap();
    for (name, value) in fields {
        b.type_into(&format!("#submit [name=\"{name}\"]"), value).unwrap();
    }
    let checked = b.eval("document.querySelector('#submit [name=dry_run]').checked").unwrap();
    if checked != json!(dry_run) {
        b.click("#submit [name=dry_run]").unwrap();
    }
    assert_eq!(b.eval("document.querySelector('#submit [name=dry_run]').checked").unwrap(), json!(dry_run));
    b.click("#submit-button").unwrap();
    let submitted = format!("(document.getElementById('submit-result').dataset.jobId || '') !== {before}");
    b.wait_for(&submitted, SETTLE_TIMEOUT).unwrap_or_else(|e| panic!("{e}; the page shows: {}", action_error(b)));
    let id = b.eval("document.getElementById('submit-result').dataset.jobId").unwrap();
    let id = id.as_str().unwrap().to_string();
    b.wait_for(&row(&id, ""), SETTLE_TIMEOUT).unwrap();
    id
}

/// What the page's action-error element shows ("" while hidden).
fn action_error(b: &mut Browser) -> String {
    let shown = b.eval("document.getElementById('action-error').hidden ? '' : document.getElementById('action-error-text').textContent");
    shown.unwrap().as_str().unwrap_or_default().to_string()
}

/// Waits until the page's row shows the state the API gives the job.
fn row_shows_state(b: &mut Browser, id: &str, state: &str) {
    b.wait_for(&format!("{}.dataset.state === '{state}'", row(id, "")), SETTLE_TIMEOUT).unwrap();
}

/// Checks that whatever `bkt-b/PREFIX` holds is whole and byte-exact against `source`.
fn only_whole_objects(c: &Clouds, prefix: &str, source: &Path) {
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir(&format!("bkt-b/{prefix}"), got.path()).unwrap();
    for entry in std::fs::read_dir(got.path()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        let same = std::fs::read(&p).unwrap() == std::fs::read(source.join(&name)).unwrap();
        assert!(same, "bkt-b/{prefix}/{name:?} is partial or differs from its source");
    }
}

#[test]
fn the_dashboard_takes_a_job_through_its_whole_life_by_clicks() {
    let Some(c) = clouds() else { return };
    let Some(chromium) = chromium() else { return };
    let source = load(&c, "many", 200, 16 * KIB);
    let app = Appliance::start(c.config.path(), &[]);
    let mut b = Browser::start(&chromium).unwrap();
    b.navigate(&format!("{}/", app.url)).unwrap();

    // The header names the version /healthz gives; the workers name the stage or its absence.
    let version = app.ok("GET", "/healthz", None)["version"].as_str().unwrap().to_string();
    b.wait_for("document.getElementById('version').dataset.version", SETTLE_TIMEOUT).unwrap();
    assert_eq!(b.eval("document.getElementById('version').dataset.version").unwrap(), json!(version));
    let shown = b.eval("document.getElementById('version').textContent").unwrap();
    assert!(shown.as_str().unwrap().contains(&version), "{shown}");
    let stage = app.ok("GET", "/v1/workers", None)["stage"].clone();
    let want = if stage.is_null() { "none" } else { "on" };
    b.wait_for(&format!("document.getElementById('stage').dataset.stage === '{want}'"), SETTLE_TIMEOUT).unwrap();
    if stage.is_null() {
        let text = b.eval("document.getElementById('stage').textContent").unwrap();
        assert_eq!(text, json!("no stage"));
    }

    // Submitted through the form, one object at a time and slowed so that it runs
    // while the clicks below land (a liveness margin: the checks hold at any speed
    // at which it is still running, and the limit is lifted before the end).
    let id = submit(
        &mut b,
        &[
            ("source", "a:bkt-a/many"),
            ("destination", "b:bkt-b/many"),
            ("transfers", "1"),
            ("bwlimit", "100K"),
            ("tpslimit", ""),
        ],
        false,
    );
    let job = app.job(&id);
    assert_eq!((&job["source"], &job["destination"]), (&json!("a:bkt-a/many"), &json!("b:bkt-b/many")), "{job}");
    let o = &job["options"];
    assert_eq!((&o["transfers"], &o["bwlimit"], &o["dry_run"]), (&json!(1), &json!("100K"), &json!(false)), "{job}");
    let marked = b.eval(&format!("{}.hasAttribute('data-dry-run')", row(&id, ""))).unwrap();
    assert_eq!(marked, json!(false), "a real job is not marked as a dry run");

    // Pause.
    click_action(&mut b, &id, "pause");
    app.wait_for(&id, "paused", |j| j["state"] == "paused");
    row_shows_state(&mut b, &id, "paused");
    b.wait_for(
        &format!(
            "!{} && {}",
            row(&id, "button[data-action=\"pause\"]:not([hidden])"),
            row(&id, "button[data-action=\"resume\"]:not([hidden])")
        ),
        SETTLE_TIMEOUT,
    )
    .unwrap();
    // While paused: an elapsed time, no ETA (nothing moves), and the listing marker
    // exactly when the API says the source is still being listed.
    let elapsed = b.eval(&format!("{}.textContent", row(&id, ".elapsed"))).unwrap();
    assert!(elapsed.as_str().unwrap().starts_with("elapsed "), "{elapsed}");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let listing = app.job(&id)["listing"].clone();
        let shown = b.eval(&format!("[{} !== null, {} !== null]", row(&id, ".listing"), row(&id, ".eta"))).unwrap();
        let still = app.job(&id)["listing"].clone();
        if listing == still && shown == json!([listing, false]) {
            break;
        }
        assert!(Instant::now() < deadline, "the row's [listing marker, ETA] {shown} never matched listing {listing}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Resume; once it runs at a steady rate the row shows an ETA (or that it is still listing).
    click_action(&mut b, &id, "resume");
    app.wait_for(&id, "running again", |j| j["state"] == "running");
    row_shows_state(&mut b, &id, "running");
    b.wait_for(&format!("{} || {}", row(&id, ".eta[data-eta-seconds]"), row(&id, ".listing")), SETTLE_TIMEOUT).unwrap();

    // Scale: a bad limit is refused with the API's own words, shown on the page; then
    // 4 transfers and no limit.
    b.type_into(&format!("tr.job[data-id=\"{id}\"] .scale-bwlimit"), "fast").unwrap();
    b.click(&button(&id, "scale")).unwrap();
    b.wait_for("!document.getElementById('action-error').hidden", SETTLE_TIMEOUT).unwrap();
    let said = action_error(&mut b);
    assert!(said.contains("bwlimit \"fast\"") && said.contains(&id), "{said}");
    b.type_into(&format!("tr.job[data-id=\"{id}\"] .scale-transfers"), "4").unwrap();
    b.type_into(&format!("tr.job[data-id=\"{id}\"] .scale-bwlimit"), "off").unwrap();
    b.click(&button(&id, "scale")).unwrap();
    let job = app.wait_for(&id, "scaled", |j| j["options"]["transfers"] == 4 || j["state"] != "running");
    assert_eq!((&job["options"]["transfers"], &job["options"]["bwlimit"]), (&json!(4), &json!("off")), "{job}");
    b.wait_for("document.getElementById('action-error').hidden", SETTLE_TIMEOUT).unwrap();

    // It finishes; the row says so, with no ETA and no listing marker.
    let job = app.wait_for(&id, "finished", |j| !j["finished_at"].is_null());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counters"]["objects_copied"], 200, "{job}");
    row_shows_state(&mut b, &id, "succeeded");
    let leftover = b.eval(&format!("[{} === null, {} === null]", row(&id, ".eta"), row(&id, ".listing"))).unwrap();
    assert_eq!(leftover, json!([true, true]));
    c.b.rclone_check_download(&c.a, "bkt-a/many", "bkt-b/many").unwrap();

    // The average rate of finished jobs: their bytes over their seconds.
    let jobs = app.ok("GET", "/v1/jobs", None);
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for j in jobs["jobs"].as_array().unwrap() {
        if j["state"] == "succeeded" && j["options"]["dry_run"] == false && j["seconds"].as_f64().unwrap_or(0.0) > 0.0 {
            bytes += j["counters"]["bytes_copied"].as_f64().unwrap();
            seconds += j["seconds"].as_f64().unwrap();
        }
    }
    assert!(seconds > 0.0, "a succeeded job reports its seconds: {jobs}");
    b.wait_for("document.getElementById('average-rate').dataset.bytesPerSecond", SETTLE_TIMEOUT).unwrap();
    let shown = b.eval("Number(document.getElementById('average-rate').dataset.bytesPerSecond)").unwrap();
    let (shown, want) = (shown.as_f64().unwrap(), bytes / seconds);
    assert!((shown - want).abs() <= want * 1e-9, "average rate shown {shown}, the jobs say {want}");

    // Retries and throttling per store, where the job view gives them.
    let job = app.job(&id);
    if let Some(stores) = job.get("stores").filter(|s| s.is_object()) {
        for side in ["source", "destination"] {
            let s = &stores[side];
            let (retries, throttled) = (s["retries"].as_u64().unwrap(), s["throttled"].as_u64().unwrap());
            let shown = row(
                &id,
                &format!(".store[data-side=\"{side}\"][data-retries=\"{retries}\"][data-throttled=\"{throttled}\"]"),
            );
            b.wait_for(&shown, SETTLE_TIMEOUT).unwrap();
        }
    } else {
        eprintln!("note: the job view has no `stores` yet; the per-store counts are not checked");
    }

    // Verify: the row's button starts a check, whose result the API and the row show.
    click_action(&mut b, &id, "verify");
    let job = app.wait_for(&id, "verified", |j| j["verify"]["state"] == "done" || j["verify"]["state"] == "failed");
    let v = &job["verify"];
    assert_eq!(
        (&v["state"], &v["objects_matched"], &v["objects_missing"], &v["objects_mismatched"]),
        (&json!("done"), &json!(200), &json!(0), &json!(0)),
        "{job}"
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    b.wait_for(&format!("{}.textContent.startsWith('done: 200/200 matched')", row(&id, "td.verify")), SETTLE_TIMEOUT)
        .unwrap();

    // A dry run: marked as such on the page, and nothing reaches its destination.
    let dry = submit(&mut b, &[("destination", "b:bkt-b/dry"), ("bwlimit", ""), ("transfers", "")], true);
    assert_eq!(app.job(&dry)["options"]["dry_run"], true);
    b.wait_for(&format!("{}.dataset.dryRun === 'true'", row(&dry, "")), SETTLE_TIMEOUT).unwrap();
    let label = b.eval(&format!("{}.textContent", row(&dry, ".badge.dry-run"))).unwrap();
    assert_eq!(label, json!("dry run"));
    let job = app.wait_for(&dry, "finished", |j| !j["finished_at"].is_null());
    assert_eq!(job["state"], "succeeded", "{job}");
    let got = tempfile::tempdir().unwrap();
    let _ = c.b.download_dir("bkt-b/dry", got.path()); // nothing there may be an error: fine
    assert_eq!(std::fs::read_dir(got.path()).unwrap().count(), 0, "a dry run copied something");

    // Cancel: a slow job cancelled once it has copied something; what reached its
    // destination is whole and byte-exact.
    let cancelled = submit(&mut b, &[("destination", "b:bkt-b/cancel"), ("transfers", "1"), ("bwlimit", "50K")], false);
    app.wait_for(&cancelled, "copied any bytes", |j| j["counters"]["bytes_copied"].as_u64().unwrap_or(0) > 0);
    click_action(&mut b, &cancelled, "cancel");
    app.wait_for(&cancelled, "cancelled", |j| j["state"] == "cancelled");
    row_shows_state(&mut b, &cancelled, "cancelled");
    app.wait_for(&cancelled, "wound down", |j| !j["finished_at"].is_null());
    only_whole_objects(&c, "cancel", source.path());
    assert_eq!(action_error(&mut b), "", "no action failed");
}

#[test]
fn with_a_token_the_dashboard_asks_for_it_and_acts_once_it_is_given() {
    let Some(c) = clouds() else { return };
    let Some(chromium) = chromium() else { return };
    let _few = load(&c, "few", 5, 4 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut app = Appliance::start(c.config.path(), &["--token-file", token_file.to_str().unwrap()]);
    app.token = Some(TOKEN.into());
    let mut b = Browser::start(&chromium).unwrap();
    b.navigate(&format!("{}/", app.url)).unwrap();

    // Without a token: the page says what it needs, and the version (open) still shows.
    b.wait_for("!document.getElementById('auth-msg').hidden", SETTLE_TIMEOUT).unwrap();
    let msg = b.eval("document.getElementById('auth-msg').textContent").unwrap();
    assert!(msg.as_str().unwrap().contains("needs its API token"), "{msg}");
    b.wait_for("document.getElementById('version').dataset.version", SETTLE_TIMEOUT).unwrap();
    // A wrong token is named as rejected.
    b.type_into("#token", "not-the-token").unwrap();
    b.click("#auth button[type=submit]").unwrap();
    b.wait_for("document.getElementById('auth-msg').textContent.includes('rejected')", SETTLE_TIMEOUT).unwrap();
    // The right one: the page connects and acts.
    b.type_into("#token", TOKEN).unwrap();
    b.click("#auth button[type=submit]").unwrap();
    b.wait_for("document.getElementById('auth-msg').hidden && document.getElementById('status').textContent.startsWith('connected')", SETTLE_TIMEOUT).unwrap();
    assert_eq!(b.eval("sessionStorage.getItem('laminar-token')").unwrap(), json!(TOKEN));
    let id = submit(&mut b, &[("source", "a:bkt-a/few"), ("destination", "b:bkt-b/few")], false);
    let job = app.wait_for(&id, "finished", |j| !j["finished_at"].is_null());
    assert_eq!(job["state"], "succeeded", "{job}");
    // Reloaded, the page keeps the token for the tab and acts without asking again.
    b.navigate(&format!("{}/", app.url)).unwrap();
    click_action(&mut b, &id, "verify");
    let job = app.wait_for(&id, "verified", |j| j["verify"]["state"] == "done" || j["verify"]["state"] == "failed");
    assert_eq!((&job["verify"]["state"], &job["verify"]["objects_matched"]), (&json!("done"), &json!(5)), "{job}");
    assert_eq!(b.eval("document.getElementById('auth-msg').hidden").unwrap(), json!(true));
    c.b.rclone_check_download(&c.a, "bkt-a/few", "bkt-b/few").unwrap();
}
