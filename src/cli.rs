//! Every flag of the `fedslice` CLI, with its help text, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "fedslice",
    version,
    about = "Federated slice-based self-supervised learning for knee MRI: synthetic cohorts, the federated demo, centralised baseline, benchmarks"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as `text` or `json` (one object per line, for log shippers).
    #[arg(long, global = true, default_value = "text")]
    pub log_format: fedslice::process::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a synthetic multi-site knee MRI cohort (MRNet layout + labels).
    Phantom(PhantomArgs),
    /// Centralised baseline: GMML-pretrain, fine-tune the exam classifier, evaluate on held-out exams.
    Train(TrainArgs),
    /// Measure training-step time and mask-generation throughput.
    Bench(BenchArgs),
    /// Score a saved classifier on a cohort's held-out (valid/) exams.
    Evaluate(EvaluateArgs),
    /// One-machine federated demo: aggregator + one agent per site over mutual TLS on loopback.
    Demo(DemoArgs),
    /// Quality study: the training recipe over N seeds on two independent phantom styles (mean ± sd per arm, JSON, PNG).
    Study(StudyArgs),
    /// Write a `train` run's classifier as a radiology bundle (timm safetensors, ONNX, config, model card, digests).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A `fedslice train` run folder (its model/ is copied; an older run's model/ is converted).
    #[arg(long = "from")]
    pub from: PathBuf,
    /// The bundle folder to write (replaced whole if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Recompute the validation from this training report instead of using the
    /// one train recorded in RUN_DIR/model (an older run's model/ needs it;
    /// default there: RUN_DIR/report.json).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// A bundle (`export`, `aggregator export`) or a `train` run's model/ folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Cohort folder: one site (MRNet or exam-folder layout: DICOM / NIfTI) or a folder of sites.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Smaller cohort and budget (a few minutes on 2 CPU cores).
    #[arg(long)]
    pub quick: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Folder for the cohort, aggregator state, bundles and logs (default: a new temporary folder).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Exams per site (default 60, or 40 with --quick).
    #[arg(long)]
    pub exams_per_site: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug, Clone)]
pub struct CohortArgs {
    /// Number of sites (hospitals, each with its own scanner profile).
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Exams generated per site.
    #[arg(long, default_value_t = 60)]
    pub exams_per_site: usize,
    /// Seed; the same seed gives byte-identical cohorts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side of the generated slices in pixels; 0 lets each site's protocol
    /// draw its matrix (160–512).
    #[arg(long, default_value_t = 0)]
    pub image_size: usize,
    /// Fraction of each site's exams written to valid/ (held out).
    #[arg(long, default_value_t = 0.2)]
    pub valid_fraction: f64,
    /// Style a only: textbook tears (full strength) and no ghosting or
    /// wrap-around; protocols, contrasts, anatomy and pose still vary. For
    /// testing the plumbing, not for judging a recipe.
    #[arg(long)]
    pub textbook: bool,
    /// Style a only: label skew in [0, 1]. 0 lets each site draw its tear
    /// prevalence from 0.25-0.5; above 0 the sites spread over
    /// 0.375 +- 0.35 x skew (site 0 lowest, site 1 highest).
    #[arg(long, default_value_t = 0.0)]
    pub label_skew: f64,
    /// Style a only: scanner skew in [0, 2]. 1 as drawn; 0 the same scanner
    /// and protocol at every site; above 1 the sites further apart.
    #[arg(long, default_value_t = 1.0)]
    pub scanner_skew: f64,
    /// Relative spread of the sites' cohort sizes (quantity skew; 0 = equal,
    /// 0.8 gives 20%-180% of --exams-per-site).
    #[arg(long, default_value_t = 0.0)]
    pub size_jitter: f64,
}

#[derive(Args, Debug)]
pub struct PhantomArgs {
    /// Output folder (one sub-folder per site).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cohort: CohortArgs,
    /// How each site is stored: mrnet (`.npy` + `{train,valid}-acl.csv`), dicom (one
    /// MR Image Storage series per exam) or nifti (`.nii.gz` per exam); the last two
    /// in the exam-folder layout with `labels.csv`.
    #[arg(long, default_value = "mrnet", value_parser = ["mrnet", "dicom", "nifti"])]
    pub format: String,
    /// Which generator: a (the project's phantom; training defaults are chosen
    /// on it) or b (written independently, for testing that a recipe transfers).
    #[arg(long, default_value = "a", value_parser = ["a", "b"])]
    pub style: String,
    /// Also write previews: style a writes one PNG per variation axis into
    /// OUT/preview/; style b writes OUT/preview.png (a torn exam above the
    /// same knee intact).
    #[arg(long)]
    pub preview: bool,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Data folder: one site (MRNet or exam-folder layout: DICOM / NIfTI) or a folder of sites. Omitted: a phantom
    /// cohort is generated into RUN_DIR/data with the cohort options below.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The plane read from `--data`: sagittal, coronal or axial.
    #[arg(long, default_value = "sagittal")]
    pub plane: fedslice::data::plane::Plane,
    #[command(flatten)]
    pub cohort: CohortArgs,
    /// Fraction of training exams whose labels are used for fine-tuning.
    #[arg(long, default_value_t = 1.0)]
    pub labelled_fraction: f64,
    /// Skip pretraining: train the classifier from a random initialisation.
    #[arg(long)]
    pub no_pretrain: bool,
    /// Seed for splits, initialisation order and augmentation.
    #[arg(long = "train-seed", default_value_t = 0)]
    pub train_seed: u64,
    /// Run folder for the model bundle (RUN_DIR/model) and report (default: runs/<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Report JSON path (default: RUN_DIR/report.json).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

/// The training recipe: model, pretraining, fine-tuning and preprocessing.
/// `train` and `study` share these flags and their defaults.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Model preset: test, vit-tiny or vit-small.
    #[arg(long, default_value = "test")]
    pub preset: String,
    /// Slice pooling: transformer (SB-SSL) or max (MRNet baseline).
    #[arg(long, default_value = "transformer")]
    pub pooling: String,
    /// What embeds a slice: max-patch (element-wise max of the encoder's patch
    /// tokens), mean-patch (their mean) or cls (its CLS token; GMML never
    /// trains it, see README).
    #[arg(long, default_value_t = Default::default())]
    pub slice_embedding: fedslice::model::SliceEmbedding,
    /// GMML pretraining epochs over all training slices.
    #[arg(long, default_value_t = 8)]
    pub pretrain_epochs: usize,
    /// Fine-tuning epochs over the labelled exams.
    #[arg(long, default_value_t = 40)]
    pub finetune_epochs: usize,
    /// Pretraining batch size (slices).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Pretraining learning rate per 256 slices (scaled by batch/256).
    #[arg(long, default_value_t = fedslice::train::PretrainConfig::default().lr_per_256)]
    pub pretrain_lr: f64,
    /// Fine-tuning peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub finetune_lr: f64,
    /// Exams per fine-tuning step (all their slices form one encoder batch).
    #[arg(long, default_value_t = 1)]
    pub exams_per_step: usize,
    /// Fine-tuning augmentation: smallest random crop, as a fraction of the
    /// slice area, drawn once per exam (with ±0.1 intensity jitter).
    #[arg(long, default_value_t = 0.7)]
    pub augment_min_scale: f64,
    /// Fine-tune without augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Side in mm of the square kept around the knee, which is located in
    /// each image (0: frame by --crop-fraction around the image centre).
    #[arg(long, default_value_t = fedslice::data::preprocess::KNEE_FIELD_MM)]
    pub field_mm: f64,
    /// Thickness in mm of the slab of slices kept around the knee's
    /// medial–lateral centre (0: all slices, or --central-slices).
    #[arg(long, default_value_t = fedslice::data::preprocess::KNEE_SLAB_MM)]
    pub slab_mm: f64,
    /// Legacy framing: keep this many central slices (0 keeps all) instead of
    /// a slab found from the data; implies --slab-mm 0.
    #[arg(long, conflicts_with = "slab_mm")]
    pub central_slices: Option<usize>,
    /// Legacy framing: keep this central fraction of each slice (1 = whole
    /// slice) instead of a window around the located knee; implies --field-mm 0.
    #[arg(long, conflicts_with = "field_mm")]
    pub crop_fraction: Option<f64>,
    /// Compute device: flex (CPU) or wgpu (GPU; needs a build with --features wgpu).
    #[arg(long, default_value = "flex")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct StudyArgs {
    /// Number of seeds; seed i draws its own cohorts and initialisations.
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    /// First seed (seeds are FIRST, FIRST+1, ...).
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Output folder: study.json (rewritten after every run) and study.png.
    #[arg(long, default_value = "study")]
    pub out: PathBuf,
    /// Arm groups (comma-separated): centralised, low-labels, cross-b-to-a, curve. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    /// Style A (training-default phantom) sites and exams per site.
    #[arg(long, default_value_t = 3)]
    pub a_sites: usize,
    #[arg(long, default_value_t = 80)]
    pub a_exams_per_site: usize,
    /// Style B (independent phantom, test only) sites and exams per site.
    #[arg(long, default_value_t = 3)]
    pub b_sites: usize,
    #[arg(long, default_value_t = 84)]
    pub b_exams_per_site: usize,
    /// Phantom in-plane matrix; 0 draws one per site (160–512).
    #[arg(long, default_value_t = 0)]
    pub image_size: usize,
    /// Labelled fraction of the low-label arms.
    #[arg(long, default_value_t = 0.1)]
    pub low_label_fraction: f64,
    /// Style B training-set sizes of the from-scratch learning curve.
    #[arg(long, default_value = "50,100,200", value_delimiter = ',')]
    pub curve: Vec<usize>,
    /// Small cohorts and short training (a smoke run of a few minutes).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub federated: FederatedStudyArgs,
}

/// `fedslice study --federated`: the demo's consortium and jobs, simulated in
/// one process, against each site alone and all data pooled.
#[derive(Args, Debug, Clone)]
pub struct FederatedStudyArgs {
    /// Run the federated study instead (arms: federated, centralised, local;
    /// cohort and budget of `demo`, or of `demo --quick` with --quick).
    #[arg(long)]
    pub federated: bool,
    /// Federated study: number of sites.
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Federated study: exams per site (default: the demo's).
    #[arg(long)]
    pub exams_per_site: Option<usize>,
    /// Federated study: held-out exams per site, on top of the training
    /// exams (default: the demo's 25% share; more gives tighter AUCs).
    #[arg(long)]
    pub test_exams_per_site: Option<usize>,
    /// Federated study: relative spread of the sites' cohort sizes
    /// (quantity skew; 0 = equal, 0.8 gives 20%-180% of the exams per site).
    #[arg(long, default_value_t = 0.0)]
    pub size_jitter: f64,
    /// Federated study: label skew in [0, 1] (see `phantom --label-skew`).
    #[arg(long, default_value_t = 0.0)]
    pub label_skew: f64,
    /// Federated study: scanner skew in [0, 2] (see `phantom --scanner-skew`).
    #[arg(long, default_value_t = 1.0)]
    pub scanner_skew: f64,
    /// Federated study: finetune rounds (default: the demo's).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Federated study: local epochs per finetune round (default: the demo's).
    #[arg(long)]
    pub local_epochs: Option<usize>,
    /// Federated study: pretrain rounds (default: the demo's; 0 = no pretraining).
    #[arg(long)]
    pub pretrain_rounds: Option<u32>,
    /// Federated study: FedProx μ of both jobs.
    #[arg(long, default_value_t = 0.0)]
    pub fedprox_mu: f64,
    /// Federated study: server optimiser of the finetune job, sgd or adam.
    #[arg(long, default_value = "sgd")]
    pub server_optimizer: String,
    /// Federated study: server learning rate of the finetune job.
    #[arg(long, default_value_t = 1.0)]
    pub server_lr: f32,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Presets to time (comma-separated).
    #[arg(long, default_value = "test,vit-tiny", value_delimiter = ',')]
    pub presets: Vec<String>,
    /// Images per training step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps per preset (after warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps per preset.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Devices to time (comma-separated): flex, wgpu.
    #[arg(long, default_value = "flex", value_delimiter = ',')]
    pub device: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of training steps: time decoding + streaming FedAvg of this many
    /// site updates per preset (comma-separated), and bytes per update in f32/f16/bf16.
    #[arg(long, value_delimiter = ',')]
    pub aggregation_sites: Vec<usize>,
    /// Instead of training steps: per-round overhead (everything but local
    /// training) of this many sites on loopback, first preset, 3 rounds.
    #[arg(long)]
    pub round_overhead_sites: Option<usize>,
    /// Instead of training steps: ingestion throughput in slices/s per format
    /// (MRNet npy, DICOM uncompressed / RLE / JPEG 2000, NIfTI gz), cold and
    /// from the preprocessing cache.
    #[arg(long)]
    pub ingest: bool,
    /// Phantom exams per format for `--ingest`.
    #[arg(long, default_value_t = 16)]
    pub ingest_exams: usize,
    /// Slice side of the phantom exams for `--ingest`.
    #[arg(long, default_value_t = 256)]
    pub ingest_side: usize,
    /// Instead of training steps: predictor latency per exam (DICOM read,
    /// preprocessing, classifier with slice scores) per preset and device.
    #[arg(long)]
    pub predict: bool,
}
