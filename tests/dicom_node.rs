//! `site-agent dicom-node` end to end, with DCMTK as the other DICOM nodes: a
//! model trained on a DICOM phantom cohort serves a node; `echoscu` verifies
//! it, `storescu` sends it one exam, and the node writes result.json and a
//! Comprehensive SR whose probability (read back by `dsrdump`) is the one
//! `site-agent predict` gives the same exam folder, and sends that SR to a
//! DCMTK `storescp`. Along the way: a wrong called AE title is rejected
//! (A-ASSOCIATE-RJ, permanent, called AE title not recognised); unsupported
//! SOP classes and transfer syntaxes are declined; an association over the
//! limit is rejected as transient, local limit exceeded; garbage on the port
//! does not hurt; C-STOREs that cannot be filed get failure statuses (C000H,
//! A900H, 0122H) and leave nothing behind; a series the predictor cannot use
//! gets error.json; an instance that arrives again makes its series run
//! again; no identifier reaches the log, and a calling AE title with control
//! characters reaches it escaped; SIGTERM stops the node cleanly, and
//! a restart clears partial files and predicts a series left without result.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    dicom_tools_required, fedslice, phantom_as, run_ok, tool_available, train_and_export,
};
use dicom_ul::ClientAssociationOptions;
use dicom_ul::Pdu;
use dicom_ul::association::Error as UlError;
use dicom_ul::pdu::{
    AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, PDataValue, PDataValueType,
};

const AE: &str = "FEDSLICE";
const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The node, killed if the test fails before stopping it.
struct Node {
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Starts the node and waits until it listens.
    fn start(bundle: &Path, port: u16, storage: &Path, log: &Path, extra: &[&str]) -> Self {
        let node = Node {
            child: Some(
                fedslice()
                    .args(["site-agent", "dicom-node", "--model"])
                    .arg(bundle)
                    .args(["--ae-title", AE, "--port", &port.to_string()])
                    .args(["--listen-host", "127.0.0.1", "--storage"])
                    .arg(storage)
                    .args(["--quiet-period", "1"])
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(log).expect("log file"))
                    .spawn()
                    .expect("start the node"),
            ),
            log: log.to_path_buf(),
        };
        wait_until(Duration::from_secs(20), "node listening", || {
            node.log().contains("DICOM node listening")
        });
        node
    }

    /// SIGTERM; expects a clean exit and returns the log.
    fn stop(mut self) -> String {
        self.signal("-TERM");
        let mut child = self.child.take().expect("running");
        let stop = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll node") {
                break status;
            }
            assert!(
                stop.elapsed() < Duration::from_secs(15),
                "the node ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        let log = self.log();
        assert!(status.success(), "node exit {status:?}:\n{log}");
        assert!(log.contains("DICOM node stopped"), "{log}");
        log
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("sh")
            .args(["-c", &format!("kill {sig} {pid}")])
            .status()
            .expect("run sh");
        assert!(status.success(), "kill {sig} failed");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node log:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A DCMTK process killed on drop.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echoscu(port: u16, called: &str) -> std::process::Output {
    Command::new("echoscu")
        .args([
            "-aec",
            called,
            "-aet",
            "TESTSCU",
            "127.0.0.1",
            &port.to_string(),
        ])
        .output()
        .expect("run echoscu")
}

/// `storescu` with Nagle off: DCMTK leaves it on unless TCP_NODELAY=1, and
/// then each instance waits out the receiver's delayed ACK (~40 ms).
fn storescu(port: u16, files: &[PathBuf]) -> std::process::Output {
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args([
            "-aec",
            AE,
            "-aet",
            "TESTSCU",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(files)
        .output()
        .expect("run storescu")
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The value `dsrdump` prints for the NUM item "Probability of ACL tear".
fn dumped_probability(sr: &Path) -> f64 {
    let dump = run_ok(Command::new("dsrdump").arg(sr), "dsrdump");
    assert!(dump.contains("Comprehensive SR Document"), "{dump}");
    let key = "\"Probability of ACL tear\")=\"";
    let start = dump
        .find(key)
        .unwrap_or_else(|| panic!("no probability in the SR:\n{dump}"))
        + key.len();
    let end = start + dump[start..].find('"').expect("closing quote");
    dump[start..end].parse().expect("a number")
}

fn files_under(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

/// One Implicit VR Little Endian element (value padded to even length).
fn element(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(&v);
    out
}

/// A C-STORE-RQ command set, written by hand so the test does not trust the
/// node's own encoder.
fn c_store_rq(class: &str, instance: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(element(0x0000, 0x0002, class.as_bytes()));
    body.extend(element(0x0000, 0x0100, &0x0001u16.to_le_bytes()));
    body.extend(element(0x0000, 0x0110, &1u16.to_le_bytes()));
    body.extend(element(0x0000, 0x0700, &0u16.to_le_bytes()));
    body.extend(element(0x0000, 0x0800, &0u16.to_le_bytes()));
    body.extend(element(0x0000, 0x1000, instance.as_bytes()));
    let mut out = element(0x0000, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// The Status (0000,0900) of a response command set.
fn status_of(command: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 8 <= command.len() {
        let group = u16::from_le_bytes([command[i], command[i + 1]]);
        let elem = u16::from_le_bytes([command[i + 2], command[i + 3]]);
        let len = u32::from_le_bytes([
            command[i + 4],
            command[i + 5],
            command[i + 6],
            command[i + 7],
        ]) as usize;
        if (group, elem) == (0x0000, 0x0900) && len == 2 && i + 10 <= command.len() {
            return Some(u16::from_le_bytes([command[i + 8], command[i + 9]]));
        }
        i += 8 + len;
    }
    None
}

/// Sends one C-STORE over a fresh association (MR storage, Explicit VR
/// Little Endian) and returns the response status.
fn c_store_status(port: u16, class: &str, instance: &str, data_set: &[u8]) -> u16 {
    let mut assoc = ClientAssociationOptions::new()
        .called_ae_title(AE)
        .with_presentation_context(MR_IMAGE_STORAGE, vec!["1.2.840.10008.1.2.1"])
        .establish(("127.0.0.1", port))
        .expect("association");
    let pc = assoc.presentation_contexts()[0].id;
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: c_store_rq(class, instance),
            }],
        })
        .expect("send command");
    {
        let mut writer = assoc.send_pdata(pc);
        writer.write_all(data_set).expect("send data set");
        writer.finish().expect("send data set");
    }
    let mut response = Vec::new();
    loop {
        match assoc.receive().expect("response") {
            Pdu::PData { data } => {
                let last = data.iter().any(|v| v.is_last);
                for v in data {
                    response.extend(v.data);
                }
                if last {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assoc.release().expect("release");
    status_of(&response).expect("a status")
}

/// The data set of a Part 10 file: what follows the file meta group.
fn data_set_of(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    // (0002,0000) UL group length: tag 4, VR 2, length 2, value 4.
    let meta_len = u32::from_le_bytes([file[140], file[141], file[142], file[143]]) as usize;
    &file[144 + meta_len..]
}

/// A UI value of an Explicit VR Little Endian data set, found by its tag.
fn explicit_ui(data_set: &[u8], group: u16, elem: u16) -> String {
    let mut head = Vec::new();
    head.extend_from_slice(&group.to_le_bytes());
    head.extend_from_slice(&elem.to_le_bytes());
    head.extend_from_slice(b"UI");
    let at = data_set
        .windows(head.len())
        .position(|w| w == head.as_slice())
        .expect("tag present")
        + head.len();
    let len = u16::from_le_bytes([data_set[at], data_set[at + 1]]) as usize;
    String::from_utf8_lossy(&data_set[at + 2..at + 2 + len])
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// `haystack` with the first occurrence of `from` replaced by `to` (same length).
fn replace_once(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = haystack.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn dicom_node_classifies_a_stored_series_and_sends_the_sr() {
    let tools = ["echoscu", "storescu", "storescp", "dsrdump"];
    if !tools.iter().all(|t| tool_available(t)) {
        assert!(
            !dicom_tools_required(),
            "DCMTK (echoscu, storescu, storescp, dsrdump) is required here"
        );
        eprintln!("SKIPPED: install dcmtk to test the DICOM node");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("dicom");
    phantom_as("dicom", &data, 2, 12, 3, 64);
    let (_, bundle) = train_and_export(&data, root);
    let exam = data.join("site-00/valid/0009");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&exam)
        .expect("exam folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() > 5, "{files:?}");

    // What `site-agent predict` says about the same exam folder.
    let json = root.join("predict.json");
    run_ok(
        fedslice()
            .args(["site-agent", "predict", "--model"])
            .arg(&bundle)
            .arg("--input")
            .arg(&exam)
            .arg("--json")
            .arg(&json)
            .arg("--sr")
            .arg(root.join("predict-sr.dcm")),
        "predict",
    );
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("predict JSON")).expect("JSON");
    let p_expected = expected["probability"].as_f64().expect("probability");
    let series_uid = expected["input"]["series"]["series_instance_uid"]
        .as_str()
        .expect("series UID")
        .to_owned();
    let study_uid = expected["input"]["series"]["study_instance_uid"]
        .as_str()
        .expect("study UID")
        .to_owned();

    // The SR's destination: DCMTK's storescp.
    let received = root.join("received");
    std::fs::create_dir_all(&received).expect("mkdir");
    let dest_port = free_port();
    let _storescp = Helper(
        Command::new("storescp")
            .args(["-aet", "DESTSCP", "-od"])
            .arg(&received)
            .arg(dest_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start storescp"),
    );

    let port = free_port();
    let storage = root.join("storage");
    let node = Node::start(
        &bundle,
        port,
        &storage,
        &root.join("node.log"),
        &[
            "--max-associations",
            "2",
            "--destination",
            &format!("DESTSCP@127.0.0.1:{dest_port}"),
        ],
    );

    // Verification, and the called AE title check.
    let echo = echoscu(port, AE);
    assert!(echo.status.success(), "C-ECHO failed: {}", text(&echo));
    let wrong = echoscu(port, "NOT-FEDSLICE");
    assert!(
        !wrong.status.success(),
        "a wrong called AE title was accepted"
    );
    assert!(
        text(&wrong).contains("Called AE Title Not Recognized"),
        "{}",
        text(&wrong)
    );
    match ClientAssociationOptions::new()
        .called_ae_title("NOT-FEDSLICE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(("127.0.0.1", port))
    {
        Err(UlError::Rejected { association_rj, .. }) => {
            assert_eq!(association_rj.result, AssociationRJResult::Permanent);
            assert_eq!(
                association_rj.source,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CalledAETitleNotRecognized
                )
            );
        }
        other => panic!("expected an A-ASSOCIATE-RJ, got {:?}", other.map(|_| ())),
    }

    // The calling AE title is whatever the peer sends, and the node logs it:
    // a terminal escape and a line break in it must not reach the log raw
    // nor forge a line of their own (security review L3).
    let forged_ae = "X\u{1b}[31m\nFAKE LINE";
    let odd = ClientAssociationOptions::new()
        .calling_ae_title(forged_ae)
        .called_ae_title(AE)
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(("127.0.0.1", port))
        .expect("an association from an odd calling AE title");
    drop(odd);
    wait_until(
        Duration::from_secs(10),
        "the odd association logged",
        || node.log().contains("FAKE LINE"),
    );
    let log = node.log();
    assert!(log.contains("calling_ae=X\\u{1b}[31m\\nFAKE LINE"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "a raw escape reached the log:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FAKE LINE")),
        "a forged line in the log:\n{log}"
    );

    // Only MR storage (and Verification), only native little endian encodings.
    for (abstract_syntax, transfer_syntax, what) in [
        (
            MR_IMAGE_STORAGE,
            "1.2.840.10008.1.2.2",
            "explicit VR big endian",
        ),
        (MR_IMAGE_STORAGE, "1.2.840.10008.1.2.4.50", "JPEG baseline"),
        (
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1",
            "CT image storage",
        ),
    ] {
        let outcome = ClientAssociationOptions::new()
            .called_ae_title(AE)
            .with_presentation_context(abstract_syntax, vec![transfer_syntax])
            .establish(("127.0.0.1", port));
        assert!(
            matches!(outcome, Err(UlError::NoAcceptedPresentationContexts { .. })),
            "{what}: {:?}",
            outcome.map(|_| ())
        );
    }

    // Garbage, an oversized PDU and a truncated one: the node carries on.
    for bytes in [
        vec![0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x41, 0x41],
        (0..=255u8).cycle().take(1000).collect(),
        vec![0x01, 0x00, 0x00, 0x00, 0x00, 0xC8, 0x00, 0x01],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }

    // Two open associations fill the two association slots; a third is
    // rejected as transient, local limit exceeded, until one closes. Each
    // holder retries a transient rejection: the node frees a slot a moment
    // after the peer of the previous association has seen it close.
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let mut held = None;
            wait_until(Duration::from_secs(5), "an association slot", || {
                held = ClientAssociationOptions::new()
                    .called_ae_title(AE)
                    .with_abstract_syntax("1.2.840.10008.1.1")
                    .establish(("127.0.0.1", port))
                    .ok();
                held.is_some()
            });
            held
        })
        .collect();
    let busy = echoscu(port, AE);
    assert!(
        !busy.status.success() && text(&busy).contains("Local Limit Exceeded"),
        "{}",
        text(&busy)
    );
    match ClientAssociationOptions::new()
        .called_ae_title(AE)
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(("127.0.0.1", port))
    {
        Err(UlError::Rejected { association_rj, .. }) => {
            assert_eq!(association_rj.result, AssociationRJResult::Transient);
            assert_eq!(
                association_rj.source,
                AssociationRJSource::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::LocalLimitExceeded
                )
            );
        }
        other => panic!(
            "expected a transient rejection, got {:?}",
            other.map(|_| ())
        ),
    }
    for hog in hogs.into_iter().flatten() {
        hog.release().expect("release a held association");
    }
    wait_until(Duration::from_secs(5), "a slot freed", || {
        echoscu(port, AE).status.success()
    });

    // A non-MR object (an SR) is declined: no presentation context for it.
    let sr_to_node = storescu(port, &[root.join("predict-sr.dcm")]);
    assert!(!sr_to_node.status.success(), "an SR was stored");
    assert!(
        text(&sr_to_node).contains("No presentation context"),
        "{}",
        text(&sr_to_node)
    );

    // C-STORE failures get a failure status, and nothing is filed.
    let original = std::fs::read(&files[0]).expect("instance");
    let data_set = data_set_of(&original);
    let instance = explicit_ui(data_set, 0x0008, 0x0018);
    let garbage = c_store_status(port, MR_IMAGE_STORAGE, &instance, &[0xFF; 64]);
    assert!(
        [0xA900, 0xC000].contains(&garbage),
        "garbage data set: status {garbage:04X}"
    );
    // (0008,0016) UI claiming 1000 bytes, with 4 there.
    let truncated = [
        0x08, 0x00, 0x16, 0x00, b'U', b'I', 0xE8, 0x03, b'1', b'.', b'2', 0,
    ];
    assert_eq!(
        c_store_status(port, MR_IMAGE_STORAGE, &instance, &truncated),
        0xC000,
        "a truncated data set"
    );
    assert_eq!(
        c_store_status(port, MR_IMAGE_STORAGE, "1.2.3.4", data_set),
        0xA900,
        "a data set whose SOP Instance UID is not the request's"
    );
    assert_eq!(
        c_store_status(port, "1.2.840.10008.5.1.4.1.1.4.1", &instance, data_set),
        0x0122,
        "an Enhanced MR request on the MR presentation context"
    );
    assert!(
        files_under(&storage, &format!("{instance}.dcm")).is_empty(),
        "a refused instance was filed"
    );

    // A series the predictor cannot use (Rows = 0, in a series of its own)
    // gets error.json; the node carries on.
    let broken = replace_once(
        &original,
        &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 0x02, 0x00, 64, 0],
        &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 0x02, 0x00, 0, 0],
    );
    let mut other_series = series_uid.clone().into_bytes();
    let last = other_series.len() - 1;
    other_series[last] = if other_series[last] == b'1' {
        b'2'
    } else {
        b'1'
    };
    let broken = replace_once(&broken, series_uid.as_bytes(), &other_series);
    let broken_path = root.join("broken.dcm");
    std::fs::write(&broken_path, broken).expect("write");
    let out = storescu(port, std::slice::from_ref(&broken_path));
    assert!(out.status.success(), "{}", text(&out));

    // The exam, over C-STORE.
    let store = storescu(port, &files);
    assert!(store.status.success(), "storescu failed: {}", text(&store));
    let sent_at = Instant::now();
    let mut srs = Vec::new();
    wait_until(Duration::from_secs(30), "the SR", || {
        srs = files_under(&storage, "fedslice-sr.dcm");
        !srs.is_empty()
    });
    let latency = sent_at.elapsed();
    assert_eq!(srs.len(), 1, "{srs:?}");
    let sr = &srs[0];
    let result_dir = sr.parent().expect("result folder");
    let series_dir = result_dir.with_extension("");
    let stored: Vec<_> = std::fs::read_dir(&series_dir)
        .expect("series folder")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(stored.len(), files.len(), "{stored:?}");
    assert!(
        !storage.join(".incoming").exists()
            || std::fs::read_dir(storage.join(".incoming"))
                .expect("incoming")
                .next()
                .is_none(),
        "partial files left behind"
    );

    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(result_dir.join("result.json")).expect("result.json"),
    )
    .expect("result JSON");
    let p_node = result["probability"].as_f64().expect("probability");
    assert!(
        (p_node - p_expected).abs() < 1e-6,
        "node {p_node}, predict {p_expected}"
    );
    assert_eq!(result["label"], expected["label"]);
    assert_eq!(
        result["input"]["series"]["slices"],
        expected["input"]["series"]["slices"]
    );
    // The SR prints 6 decimals.
    let p_sr = dumped_probability(sr);
    assert!(
        (p_sr - p_expected).abs() <= 5e-7 + 1e-12,
        "SR {p_sr}, predict {p_expected}"
    );

    let mut errors = Vec::new();
    wait_until(
        Duration::from_secs(15),
        "error.json for the broken series",
        || {
            errors = files_under(&storage, "error.json");
            !errors.is_empty()
        },
    );
    let error: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&errors[0]).expect("error.json")).expect("JSON");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("no DICOM images")),
        "{error}"
    );
    assert!(!errors[0].with_file_name("fedslice-sr.dcm").exists());

    // The SR went on to the destination.
    let mut forwarded = Vec::new();
    wait_until(Duration::from_secs(15), "the SR at the destination", || {
        forwarded = std::fs::read_dir(&received)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        !forwarded.is_empty() && result_dir.join("sent.json").is_file()
    });
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!((dumped_probability(&forwarded[0]) - p_sr).abs() < 1e-12);
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result_dir.join("sent.json")).expect("sent.json"))
            .expect("sent JSON");
    assert_eq!(sent["ok"], true, "{sent}");
    assert_eq!(sent["status"], "0000H", "{sent}");

    // An instance arriving again makes the series run again after a new quiet period.
    let again = storescu(port, &files[..1]);
    assert!(again.status.success(), "{}", text(&again));
    wait_until(Duration::from_secs(30), "a second prediction", || {
        node.log().matches("prediction written").count() == 2
    });

    // SIGTERM: a clean stop.
    let log = node.stop();

    // No patient or study identifier in the log.
    for secret in [
        "PHANTOM-valid",
        "PHANTOM^SYNTHETIC",
        study_uid.as_str(),
        series_uid.as_str(),
    ] {
        assert!(!log.contains(secret), "the log reveals {secret}:\n{log}");
    }

    // A restart clears partial files and predicts a series whose result is
    // missing (received, but stopped before its prediction).
    let partial = storage.join(".incoming/0123456789abcdef.partial");
    std::fs::write(&partial, b"half an instance").expect("write");
    std::fs::remove_file(result_dir.join("result.json")).expect("remove result");
    let node = Node::start(&bundle, port, &storage, &root.join("node2.log"), &[]);
    assert!(!partial.exists(), "partial file kept");
    wait_until(
        Duration::from_secs(15),
        "the result after a restart",
        || result_dir.join("result.json").is_file(),
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result_dir.join("result.json")).expect("result"))
            .expect("JSON");
    assert_eq!(again["probability"].as_f64(), Some(p_node));
    let log2 = node.stop();
    assert_eq!(log2.matches("prediction written").count(), 1, "{log2}");
    assert!(
        !log2.contains("prediction failed"),
        "the broken series ran again:\n{log2}"
    );

    eprintln!(
        "{} instances stored; SR written {:.0} ms after storescu returned (quiet period 1 s); test took {:.1} s",
        files.len(),
        latency.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
}
