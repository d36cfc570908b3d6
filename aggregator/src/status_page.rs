//! The operator listener's status page (issue 15 item 3): one server-rendered
//! HTML page with the consortium, its sites, jobs and rounds, per-round
//! curves of the sites' local loss and validation AUC, model versions and the
//! audit log. No JavaScript: the template (minijinja, HTML auto-escaping on)
//! draws the charts as inline SVG from coordinates computed here, and a meta
//! refresh keeps it current.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use fedslice::federated::SiteReport;
use serde::Serialize;

use crate::cli::{ago, expiry, rfc3339, when};
use crate::state::{JobRow, State, UpdateRow, now};

const TEMPLATE: &str = include_str!("status_page.html");
/// Seconds between the page's own reloads.
const REFRESH_S: u32 = 10;
/// Audit entries searched by the filter, and shown at most.
const AUDIT_SEARCHED: usize = 2000;
const AUDIT_SHOWN: usize = 200;
/// A certificate this close to its end is flagged.
const CERT_WARN_S: i64 = 30 * 86_400;

#[derive(Serialize)]
struct Page {
    generated: String,
    refresh_s: u32,
    url: String,
    overview: Overview,
    sites: Vec<SiteView>,
    jobs: Vec<JobView>,
    models: Vec<ModelView>,
    audit: Vec<AuditView>,
    audit_filter: String,
    audit_matched: usize,
}

#[derive(Serialize)]
struct Overview {
    sites_active: usize,
    sites_total: usize,
    jobs: BTreeMap<String, usize>,
    models: usize,
}

#[derive(Serialize)]
struct SiteView {
    name: String,
    status: String,
    state: &'static str,
    state_text: String,
    version: String,
    device: String,
    heartbeat: String,
    last_contact: String,
    rounds: u32,
    cert_expiry: String,
    cert_warn: bool,
}

#[derive(Serialize)]
struct JobView {
    id: String,
    phase: String,
    preset: String,
    status: String,
    rounds_closed: usize,
    rounds_total: u32,
    progress_pct: u32,
    model_version: String,
    error: Option<String>,
    open_round: Option<OpenRound>,
    rounds: Vec<RoundView>,
    charts: Vec<Chart>,
}

#[derive(Serialize)]
struct OpenRound {
    round: u32,
    reported: usize,
    expected: u32,
    min_sites: u32,
    sites: String,
    opened: String,
    deadline: String,
    /// Share of the time to the deadline already used, 0 to 100.
    time_pct: u32,
    left: String,
}

#[derive(Serialize)]
struct RoundView {
    round: u32,
    status: String,
    opened: String,
    closed: String,
    updates: usize,
    result: String,
    note: String,
}

#[derive(Serialize)]
struct ModelView {
    job: String,
    version: u32,
    digest: String,
    created: String,
    export: Option<String>,
}

#[derive(Serialize)]
struct AuditView {
    id: i64,
    at: String,
    ago: String,
    event: String,
    site: String,
    detail: String,
}

/// A line chart, in SVG user units.
#[derive(Serialize, Debug)]
pub struct Chart {
    title: String,
    width: u32,
    height: u32,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    /// A dashed horizontal line (AUC 0.5, chance).
    reference: Option<Tick>,
    lines: Vec<Line>,
}

#[derive(Serialize, Debug)]
struct Tick {
    pos: String,
    label: String,
}

#[derive(Serialize, Debug)]
struct Line {
    label: String,
    colour: &'static str,
    mean: bool,
    /// SVG `points`: "x,y x,y …".
    points: String,
    dots: Vec<Dot>,
    legend_y: String,
}

#[derive(Serialize, Debug)]
struct Dot {
    x: String,
    y: String,
    title: String,
}

/// Distinguishable on white and for the common colour blindnesses (Okabe–Ito).
const PALETTE: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
];

/// One value per round for one site (or the mean).
type Series = (String, BTreeMap<u32, f64>);

/// Lays out `series` over rounds `1..=rounds` with y in `y_range`; the last
/// series is drawn as the mean (black, thicker).
fn chart(
    title: &str,
    rounds: u32,
    y_range: (f64, f64),
    series: &[Series],
    reference: Option<(f64, &str)>,
) -> Chart {
    let (width, height) = (560u32, 230u32);
    let (left, right, top, bottom) = (48.0, 430.0, 16.0, 196.0);
    let rounds = rounds.max(2);
    let x = |round: u32| left + (right - left) * f64::from(round - 1) / f64::from(rounds - 1);
    let (lo, hi) = y_range;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = |v: f64| bottom - (bottom - top) * ((v - lo) / span).clamp(0.0, 1.0);
    let step = (rounds as usize).div_ceil(10).max(1);
    let x_ticks = (1..=rounds)
        .step_by(step)
        .map(|r| Tick {
            pos: format!("{:.1}", x(r)),
            label: r.to_string(),
        })
        .collect();
    let y_ticks = (0..=4)
        .map(|i| {
            let v = lo + span * f64::from(i) / 4.0;
            Tick {
                pos: format!("{:.1}", y(v)),
                label: format!("{v:.2}"),
            }
        })
        .collect();
    let last = series.len().saturating_sub(1);
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, (label, values))| {
            let mean = i == last;
            let points: Vec<(f64, f64, u32, f64)> = values
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(&r, &v)| (x(r), y(v), r, v))
                .collect();
            Line {
                label: label.clone(),
                colour: if mean {
                    "#000000"
                } else {
                    PALETTE[i % PALETTE.len()]
                },
                mean,
                points: points
                    .iter()
                    .map(|(px, py, _, _)| format!("{px:.1},{py:.1}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                dots: points
                    .iter()
                    .map(|&(px, py, r, v)| Dot {
                        x: format!("{px:.1}"),
                        y: format!("{py:.1}"),
                        title: format!("{label}, round {r}: {v:.4}"),
                    })
                    .collect(),
                legend_y: format!("{:.1}", top + 8.0 + 16.0 * i as f64),
            }
        })
        .collect();
    Chart {
        title: title.to_string(),
        width,
        height,
        left,
        right,
        top,
        bottom,
        x_ticks,
        y_ticks,
        reference: reference.map(|(v, label)| Tick {
            pos: format!("{:.1}", y(v)),
            label: label.to_string(),
        }),
        lines,
    }
}

/// Per-site series of one metric over a job's rounds, plus their mean
/// (unweighted: each site is one voice on this chart).
fn series(
    rounds: &[(u32, Vec<UpdateRow>)],
    metric: impl Fn(&SiteReport) -> Option<f64>,
) -> Vec<Series> {
    let mut per_site: BTreeMap<String, BTreeMap<u32, f64>> = BTreeMap::new();
    for (round, updates) in rounds {
        for update in updates {
            let Ok(metrics) =
                serde_json::from_value::<BTreeMap<String, f64>>(update.metrics.clone())
            else {
                continue;
            };
            if let Some(v) = SiteReport::from_metrics(&metrics)
                .ok()
                .and_then(|r| metric(&r))
            {
                per_site
                    .entry(update.site.clone())
                    .or_default()
                    .insert(*round, v);
            }
        }
    }
    if per_site.is_empty() {
        return Vec::new();
    }
    let mut sums: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
    for values in per_site.values() {
        for (&round, &v) in values {
            let entry = sums.entry(round).or_default();
            entry.0 += v;
            entry.1 += 1;
        }
    }
    let mean = sums
        .into_iter()
        .map(|(round, (sum, n))| (round, sum / f64::from(n)))
        .collect();
    let mut out: Vec<Series> = per_site.into_iter().collect();
    out.push(("mean of sites".into(), mean));
    out
}

fn job_view(state: &State, job: &JobRow, active_sites: u32) -> anyhow::Result<JobView> {
    let rounds = state.rounds(&job.id)?;
    let closed = rounds.iter().filter(|r| r.status == "closed").count();
    let mut with_updates = Vec::new();
    let mut views = Vec::new();
    let mut open_round = None;
    let t = now();
    for r in &rounds {
        let updates = state.updates(&job.id, r.round)?;
        if r.status == "open" {
            let span = (r.deadline - r.opened_at).max(1);
            open_round = Some(OpenRound {
                round: r.round,
                reported: updates.len(),
                expected: active_sites,
                min_sites: job.spec.min_sites,
                sites: updates
                    .iter()
                    .map(|u| u.site.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                opened: when(Some(r.opened_at)),
                deadline: rfc3339(r.deadline),
                time_pct: (((t - r.opened_at).max(0) * 100) / span).min(100) as u32,
                left: if r.deadline > t {
                    format!(
                        "{} left",
                        fedslice::heartbeat::duration((r.deadline - t) as u64)
                    )
                } else {
                    "deadline passed; closes once min-sites reported".into()
                },
            });
        }
        views.push(RoundView {
            round: r.round,
            status: r.status.clone(),
            opened: rfc3339(r.opened_at),
            closed: r.closed_at.map_or("-".into(), rfc3339),
            updates: updates.len(),
            result: r
                .result_digest
                .as_deref()
                .map_or("-".into(), |d| d.chars().take(12).collect()),
            note: r.note.clone().unwrap_or_default(),
        });
        with_updates.push((r.round, updates));
    }
    let mut charts = Vec::new();
    let loss = series(&with_updates, |r| r.losses.map(|l| l.last));
    if !loss.is_empty() {
        let top = loss
            .iter()
            .flat_map(|(_, v)| v.values().copied())
            .fold(0.0_f64, f64::max);
        charts.push(chart(
            "local loss (last epoch) per round",
            job.spec.rounds,
            (0.0, if top > 0.0 { top * 1.1 } else { 1.0 }),
            &loss,
            None,
        ));
    }
    let auc = series(&with_updates, SiteReport::auc);
    if !auc.is_empty() {
        charts.push(chart(
            "validation AUC of the global model each site received",
            job.spec.rounds,
            (0.0, 1.0),
            &auc,
            Some((0.5, "chance")),
        ));
    }
    Ok(JobView {
        id: job.id.clone(),
        phase: job.spec.phase.to_string(),
        preset: job.spec.preset.clone(),
        status: job.status.clone(),
        rounds_closed: closed,
        rounds_total: job.spec.rounds,
        progress_pct: ((closed as u64 * 100) / u64::from(job.spec.rounds.max(1))) as u32,
        model_version: job.model_version.map_or("-".into(), |v| format!("v{v}")),
        error: job.error.clone(),
        open_round,
        rounds: views,
        charts,
    })
}

/// The page, from the state database as it is now.
pub fn render(state: &State, audit_filter: Option<&str>) -> anyhow::Result<String> {
    let t = now();
    let sites = state.sites()?;
    let beats = state.heartbeats()?;
    let taken: HashMap<String, u32> = state.rounds_per_site()?;
    let jobs = state.jobs()?;
    let models = state.models()?;
    let active = sites.iter().filter(|s| s.status == "active").count();
    let mut job_counts = BTreeMap::new();
    for job in &jobs {
        *job_counts.entry(job.status.clone()).or_insert(0) += 1;
    }
    let site_views = sites
        .iter()
        .map(|s| {
            let beat = beats.get(&s.name);
            SiteView {
                name: s.name.clone(),
                status: s.status.clone(),
                state: beat.map_or("unknown", |b| b.beat.activity.name()),
                state_text: beat.map_or("no heartbeat yet".into(), |b| b.beat.activity.describe()),
                version: beat.map_or("-".into(), |b| b.beat.agent_version.clone()),
                device: beat.map_or("-".into(), |b| b.beat.device.clone()),
                heartbeat: beat.map_or("never".into(), |b| ago(Some(b.at))),
                last_contact: when(s.last_contact),
                rounds: taken.get(&s.name).copied().unwrap_or(0),
                cert_expiry: expiry(s.not_after),
                cert_warn: s.status == "active" && s.not_after - t < CERT_WARN_S,
            }
        })
        .collect();
    let active_sites = active as u32;
    let job_views = jobs
        .iter()
        .rev()
        .map(|job| job_view(state, job, active_sites))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let finished_finetune: Vec<&str> = jobs
        .iter()
        .filter(|j| j.status == "finished" && j.spec.phase == fedslice::protocol::Phase::Finetune)
        .map(|j| j.id.as_str())
        .collect();
    let model_count = models.len();
    let last_version: HashMap<&str, u32> = models.iter().fold(HashMap::new(), |mut m, row| {
        m.insert(row.job.as_str(), row.version);
        m
    });
    let model_views = models
        .iter()
        .rev()
        .map(|m| ModelView {
            job: m.job.clone(),
            version: m.version,
            digest: m.digest.clone(),
            created: when(Some(m.created_at)),
            export: (finished_finetune.contains(&m.job.as_str())
                && last_version.get(m.job.as_str()) == Some(&m.version))
            .then(|| format!("aggregator export --job {} --out DIR", m.job)),
        })
        .collect();
    let filter = audit_filter.unwrap_or("").trim().to_lowercase();
    let matched: Vec<_> = state
        .audit_log(AUDIT_SEARCHED)?
        .into_iter()
        .rev()
        .filter(|r| {
            filter.is_empty()
                || r.event.to_lowercase().contains(&filter)
                || r.site
                    .as_deref()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&filter)
                || r.detail.to_lowercase().contains(&filter)
        })
        .collect();
    let audit_matched = matched.len();
    let audit = matched
        .into_iter()
        .take(AUDIT_SHOWN)
        .map(|r| AuditView {
            id: r.id,
            at: rfc3339(r.at),
            ago: ago(Some(r.at)),
            event: r.event,
            site: r.site.unwrap_or_default(),
            detail: r.detail,
        })
        .collect();
    let page = Page {
        generated: rfc3339(t),
        refresh_s: REFRESH_S,
        url: state.meta("url")?.unwrap_or_default(),
        overview: Overview {
            sites_active: active,
            sites_total: sites.len(),
            jobs: job_counts,
            models: model_count,
        },
        sites: site_views,
        jobs: job_views,
        models: model_views,
        audit,
        audit_filter: audit_filter.unwrap_or("").to_string(),
        audit_matched,
    };
    let mut env = minijinja::Environment::new();
    // The `.html` name turns on HTML auto-escaping: site names, error
    // reasons and audit details are never markup.
    env.add_template("status.html", TEMPLATE)
        .context("the status page template")?;
    let html = env
        .get_template("status.html")
        .and_then(|t| t.render(&page))
        .context("rendering the status page")?;
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_puts_rounds_left_to_right_and_high_values_up() {
        let site: BTreeMap<u32, f64> = [(1, 0.2), (2, 0.8)].into();
        let series = vec![
            ("site-a".to_string(), site.clone()),
            ("mean".to_string(), site),
        ];
        let c = chart("t", 2, (0.0, 1.0), &series, Some((0.5, "chance")));
        let dots = &c.lines[0].dots;
        let px: Vec<f64> = dots.iter().map(|d| d.x.parse().unwrap()).collect();
        let py: Vec<f64> = dots.iter().map(|d| d.y.parse().unwrap()).collect();
        assert!(px[0] < px[1], "{px:?}");
        assert!(py[0] > py[1], "SVG y grows downwards: {py:?}");
        assert!(c.lines[1].mean && !c.lines[0].mean);
        assert_eq!(c.lines[0].points.split(' ').count(), 2);
    }
}
