//! `site-agent serve-model` over loopback: the same answer as `site-agent
//! predict` for a series posted as multipart files, a tar or a zip; health and
//! model info; clear 4xx errors for what it cannot use.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::{fedslice, phantom_as, run_ok, train_and_export};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A trained `test`-preset bundle and the DICOM cohort it was trained on.
fn trained_bundle(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("dicom");
    phantom_as("dicom", &data, 2, 12, 3, 64);
    let (_, bundle) = train_and_export(&data, root);
    (bundle, data)
}

fn start(bundle: &Path, max_body_mb: usize) -> (Server, String) {
    let mut child = fedslice()
        .args(["site-agent", "serve-model", "--model"])
        .arg(bundle)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-body-mb",
            &max_body_mb.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve-model");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (Server(child), format!("http://{addr}"))
}

/// A copy of `bundle` whose config names another plane, re-signed so it loads.
fn copy_with_plane(bundle: &Path, out: &Path, plane: &str) {
    std::fs::create_dir_all(out).expect("mkdir");
    let mut sums = String::new();
    for name in [
        "config.json",
        "model.safetensors",
        "model.onnx",
        "MODEL_CARD.md",
        "provenance.json",
    ] {
        let mut bytes = std::fs::read(bundle.join(name)).expect("bundle file");
        if name == "config.json" {
            let mut config: serde_json::Value = serde_json::from_slice(&bytes).expect("config");
            config["plane"] = plane.into();
            bytes = serde_json::to_vec_pretty(&config).expect("json");
        }
        sums.push_str(&format!("{}  {name}\n", fedslice::wire::digest(&bytes)));
        std::fs::write(out.join(name), bytes).expect("write");
    }
    std::fs::write(out.join("SHA256SUMS"), sums).expect("sums");
}

fn multipart(files: &[Vec<u8>], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, bytes) in files.iter().enumerate() {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.dcm\"\r\nContent-Type: application/dicom\r\n\r\n"
        )
        .expect("write");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write");
    body
}

fn exam_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("exam folder")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = client
        .post(format!("{url}/v1/predict"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_model_answers_like_predict_and_refuses_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (bundle, data) = trained_bundle(root);
    let exam = data.join("site-00/valid/0009");
    let expected: serde_json::Value = serde_json::from_str(&run_ok(
        fedslice()
            .args(["site-agent", "predict", "--model"])
            .arg(&bundle)
            .arg("--input")
            .arg(&exam),
        "predict",
    ))
    .expect("predict JSON");
    let expected_p = expected["probability"].as_f64().expect("probability");

    let (_server, url) = start(&bundle, 2);
    let client = reqwest::Client::new();
    let health: serde_json::Value = client
        .get(format!("{url}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let info: serde_json::Value = client
        .get(format!("{url}/v1/model"))
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(info["weights_sha256"], expected["model"]["weights_sha256"]);

    let files = exam_files(&exam);
    let boundary = "fedslice-test-boundary";
    let bodies = {
        let multipart_body = multipart(
            &files.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            boundary,
        );
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("series/{name}"), bytes.as_slice())
                .expect("tar entry");
        }
        let tar = tar.into_inner().expect("tar");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in &files {
            zip.start_file(
                format!("series/{name}"),
                zip::write::SimpleFileOptions::default(),
            )
            .expect("zip entry");
            zip.write_all(bytes).expect("zip write");
        }
        let zip = zip.finish().expect("zip").into_inner();
        vec![
            (
                format!("multipart/form-data; boundary={boundary}"),
                multipart_body,
            ),
            ("application/x-tar".to_owned(), tar),
            ("application/zip".to_owned(), zip),
        ]
    };
    for (content_type, body) in bodies {
        let (status, json) = post(&client, &url, &content_type, body).await;
        assert_eq!(status, 200, "{content_type}: {json}");
        let p = json["probability"].as_f64().expect("probability");
        assert_eq!(p, expected_p, "{content_type}");
        assert_eq!(json["label"], expected["label"]);
        assert_eq!(json["slice_scores"], expected["slice_scores"]);
        assert_eq!(
            json["input"]["series"]["series_instance_uid"],
            expected["input"]["series"]["series_instance_uid"]
        );
    }

    // Not an accepted content type.
    let (status, json) = post(&client, &url, "text/plain", b"hello".to_vec()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    // Files that are not DICOM.
    let body = multipart(&[b"not a dicom file at all".to_vec()], boundary);
    let (status, json) = post(
        &client,
        &url,
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (422, Some("no_dicom")),
        "{json}"
    );
    // A broken archive.
    let (status, json) = post(
        &client,
        &url,
        "application/zip",
        b"PK\x03\x04broken".to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("bad_archive")),
        "{json}"
    );
    // Over the 2 MiB body limit. The server answers once the limit is
    // reached and closes the connection; the client may still be writing the
    // rest and see a broken pipe instead of the answer: try again then.
    let mut oversized = None;
    for _ in 0..5 {
        let sent = client
            .post(format!("{url}/v1/predict"))
            .header("content-type", "application/dicom")
            .body(vec![0u8; 3 << 20])
            .send()
            .await;
        if let Ok(response) = sent {
            oversized = Some(response.status().as_u16());
            break;
        }
    }
    assert_eq!(oversized, Some(413));
    // A model for another plane finds no series it can read in a sagittal upload.
    let coronal = root.join("coronal-bundle");
    copy_with_plane(&bundle, &coronal, "coronal");
    let (_coronal_server, coronal_url) = start(&coronal, 2);
    let (status, json) = post(
        &client,
        &coronal_url,
        &format!("multipart/form-data; boundary={boundary}"),
        multipart(
            &files.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            boundary,
        ),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (422, Some("no_series_in_plane")),
        "{json}"
    );
    // Still serving after all that.
    let (status, _) = post(&client, &url, "application/x-tar", {
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_dir_all("s", &exam).expect("tar");
        tar.into_inner().expect("tar")
    })
    .await;
    assert_eq!(status, 200);
}
