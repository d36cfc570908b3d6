//! The site's training exams: listed and hashed once at start-up, prepared
//! once per preprocessing recipe through the on-disk cache, so a restart or a
//! new round decodes no DICOM that has been decoded before.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use fedslice::data::cache::PreparedCache;
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::{PreparedExam, PreprocessConfig};
use fedslice::data::source::{self, ExamSource, Split};

pub struct SiteData {
    pub name: String,
    /// Training exams with the SHA-256 of their input files.
    exams: Vec<(ExamSource, String)>,
    cache: PreparedCache,
    prepared: HashMap<String, Arc<Vec<PreparedExam>>>,
}

impl SiteData {
    /// Lists and hashes the site's training exams (`valid/` stays held out).
    /// An exam whose files cannot be read is logged and left out.
    pub fn load(dir: &Path, plane: Plane, cache_dir: &Path) -> anyhow::Result<Self> {
        let mut sites = source::list_sites_in(dir, plane)
            .with_context(|| format!("listing exams in {}", dir.display()))?;
        anyhow::ensure!(
            sites.len() == 1,
            "{} holds {} sites' data; a site agent trains on its own site's folder only",
            dir.display(),
            sites.len()
        );
        let site = sites.remove(0);
        let train: Vec<ExamSource> = site
            .exams
            .into_iter()
            .filter(|e| e.split == Split::Train)
            .collect();
        anyhow::ensure!(!train.is_empty(), "{}: no training exams", dir.display());
        let (exams, unreadable) = source::digest_all(train);
        for (exam, e) in unreadable {
            tracing::warn!(exam = %exam.id, "left out: {e}");
        }
        anyhow::ensure!(
            !exams.is_empty(),
            "{}: none of the training exams could be read",
            dir.display()
        );
        let cache = PreparedCache::open(&cache_dir.join("prepared"))
            .with_context(|| format!("opening the cache in {}", cache_dir.display()))?;
        Ok(Self {
            name: site.name,
            exams,
            cache,
            prepared: HashMap::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.exams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exams.is_empty()
    }

    /// The exams prepared with `config`: from memory, else from the disk
    /// cache, else decoded (and then cached). `on_exam(done, total)` follows
    /// the decoding (for the heartbeat).
    pub fn prepared(
        &mut self,
        config: &PreprocessConfig,
        on_exam: &(dyn Fn(usize, usize) + Sync),
    ) -> anyhow::Result<Arc<Vec<PreparedExam>>> {
        let key = serde_json::to_string(config)?;
        if let Some(exams) = self.prepared.get(&key) {
            return Ok(exams.clone());
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(self.exams.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  prepare [{elapsed_precise}] {wide_bar} {pos}/{len} exams  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let started = std::time::Instant::now();
        let total = self.exams.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        on_exam(0, total);
        let (exams, summary) = self.cache.prepare_all(&self.exams, config, &|| {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            let done = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            on_exam(done, total);
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        for (id, why) in &summary.failed {
            tracing::warn!(exam = %id, "left out: {why}");
        }
        tracing::info!(
            prepared = exams.len(),
            from_cache = summary.hits,
            decoded = summary.built + summary.rebuilt,
            rebuilt_corrupt = summary.rebuilt,
            left_out = summary.failed.len(),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "exams prepared"
        );
        anyhow::ensure!(
            !exams.is_empty(),
            "no exam could be prepared (first reason: {})",
            summary
                .failed
                .first()
                .map_or("none", |(_, why)| why.as_str())
        );
        let exams = Arc::new(exams);
        self.prepared.insert(key, exams.clone());
        Ok(exams)
    }
}
