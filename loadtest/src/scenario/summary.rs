//! The readable table printed at the end of a run.

use std::fmt::Write;

use super::report::Report;

/// Renders a report as text tables.
pub fn summary(r: &Report) -> String {
    let s = &r.setup;
    let mut out = String::new();
    let shape = if r.system == "metrics-server" {
        let replicas = r.processes.iter().filter(|p| p.name.starts_with("metrics-server-")).count();
        format!("{replicas} metrics-server replica(s)")
    } else {
        format!("{} shards, {} frontends", s.shards, s.frontends)
    };
    let shape = if s.kubelet_servers > 0 { format!("{shape}, kubelets served from {} kubelet-server processes", s.kubelet_servers) } else { shape };
    let _ = writeln!(
        out,
        "{} nodes, {} pods ({} containers each), {shape}, resolution {}s; ready after {:.1}s; measured {:.0}s after {:.0}s warm-up; queries {:?} as {:?}",
        s.nodes, s.pods, s.containers_per_pod, s.resolution_s, r.startup_s, r.measured_s, s.warmup_s, s.query_path, s.query_encoding
    );
    if !s.programs.is_empty() {
        let _ = writeln!(out, "programs: {}", s.programs.iter().map(|(role, p)| format!("{role} `{p}`")).collect::<Vec<_>>().join(", "));
    }
    let _ = writeln!(out, "\nquery          planned/s     ok/s   p50 ms   p99 ms   max ms  errors skipped  mean bytes");
    for (k, q) in &r.queries {
        let _ = writeln!(
            out,
            "{k:<14} {:>9.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>7} {:>7} {:>11}",
            q.planned_per_second, q.ok_per_second, q.latency_ms.p50, q.latency_ms.p99, q.latency_ms.max, q.errors, q.skipped, q.bytes_mean
        );
    }
    let c = &r.coverage;
    let f = &r.freshness;
    let _ = writeln!(out, "\ncoverage (fresh = age <= {:.0} s)     min      mean   probes at 100%", c.fresh_bound_ms / 1000.0);
    let _ = writeln!(out, "  nodes ({:>4} probes)        {:>7.2}% {:>8.2}% {:>8.1}%", c.node_probes, c.nodes_min_percent, c.nodes_mean_percent, c.nodes_full_probes_percent);
    let _ = writeln!(out, "  pods  ({:>4} probes)        {:>7.2}% {:>8.2}% {:>8.1}%", c.pod_probes, c.pods_min_percent, c.pods_mean_percent, c.pods_full_probes_percent);
    let _ = writeln!(out, "\nfreshness                      p50 ms   p99 ms   max ms");
    let _ = writeln!(out, "  node data age             {:>9.0} {:>8.0} {:>8.0}", f.node_age_ms.p50, f.node_age_ms.p99, f.node_age_ms.max);
    let _ = writeln!(out, "  pod data age              {:>9.0} {:>8.0} {:>8.0}", f.pod_age_ms.p50, f.pod_age_ms.p99, f.pod_age_ms.max);
    match &f.scrape_to_servable_ms {
        Some(h) => {
            let max = h.max_bucket_upper_bound.map_or("> last bucket".to_owned(), |m| format!("<= {m:.0}"));
            let _ = writeln!(out, "  scrape-to-servable        {:>9.1} {:>8.1} {:>8}  ({:.0} observations)", h.p50, h.p99, max, h.count);
        }
        None => {
            let _ = writeln!(out, "  scrape-to-servable        not exported by the frontends");
        }
    }
    let sc = &r.scrapes;
    let _ = writeln!(
        out,
        "\nscrapes: {:.1}/s achieved of {:.1}/s planned; {} duplicates; failures {:.0} {:?}; samples {:.0}/s",
        sc.achieved_per_second, sc.planned_per_second, sc.duplicate_scrapes, sc.scrape_failures, sc.scraper_results, sc.samples_per_second
    );
    if !sc.duplicate_pairs.is_empty() {
        let pairs: Vec<String> = sc.duplicate_pairs.iter().map(|d| format!("{} at {:.1}+{:.1}s", d.node, d.first_s, d.second_s - d.first_s)).collect();
        let _ = writeln!(out, "duplicate scrapes (first {}): {}", pairs.len(), pairs.join(", "));
    }
    if let Some(fl) = &r.floor {
        let _ = writeln!(
            out,
            "floor (one shard's share, {} nodes, during the window): {} fetches in {:.0}s, {:.3} ms CPU each; scrapers {:.3} ms CPU per scrape = {} the floor",
            fl.nodes,
            fl.fetches,
            fl.duration_s,
            fl.cpu_ms_per_fetch,
            fl.scraper_cpu_ms_per_scrape,
            fl.scraper_cpu_vs_floor.map_or("(too little CPU to compare) x".to_owned(), |r| format!("{r:.2}x"))
        );
    }
    if let Some(e) = &r.floor_error {
        let _ = writeln!(out, "floor: did not run: {e}");
    }
    if let Some(ff) = &r.frontend_floor {
        let x = |v: Option<f64>| v.map_or("-".to_owned(), |r| format!("{r:.1}x"));
        if let Some(d) = &ff.decode {
            let _ = writeln!(out, "frontend floor, decode: {} live batches ({} scrapes) from {} shards in {:.0}s, {:.4} cores", d.batches, d.scrapes, d.shards, d.duration_s, d.cores);
        }
        for e in &ff.encode {
            let _ = writeln!(out, "frontend floor, encode {} as {}: {} x {} bytes (served {}), {:.3} s CPU", e.kind, e.encoding, e.encodes, e.floor_bytes, e.served_bytes, e.cpu_s);
        }
        let _ = writeln!(
            out,
            "frontends {:.4} cores = {} the decode floor of {} replicas ({:.4} cores), {} the encode floor ({:.4} cores), {} both",
            ff.frontend_cores,
            x(ff.frontend_vs_decode),
            ff.replicas,
            ff.decode_cores.unwrap_or(0.0),
            x(ff.frontend_vs_encode),
            ff.encode_cores.unwrap_or(0.0),
            x(ff.frontend_vs_floor)
        );
        for e in &ff.errors {
            let _ = writeln!(out, "frontend floor: {e}");
        }
    }
    let _ = writeln!(out, "\nprocess               cpu s   cores   rss MiB  peak MiB");
    for p in &r.processes {
        let _ = writeln!(
            out,
            "{:<18} {:>8.1} {:>7.3} {:>9.1} {:>9.1}{}",
            p.name,
            p.cpu_s,
            p.cpu_cores,
            p.rss_mib,
            p.peak_rss_mib,
            if p.alive_at_end { "" } else { "  (gone)" }
        );
    }
    let _ = writeln!(out, "\ncomponent          cores  cores/1000 nodes  max peak MiB  peak MiB/1000 nodes");
    for (name, c) in &r.components {
        let _ = writeln!(
            out,
            "{name:<18} {:>5.3} {:>17.3} {:>13.1} {:>20.1}",
            c.cpu_cores, c.cpu_cores_per_1000_nodes, c.max_peak_rss_mib, c.peak_rss_mib_per_1000_nodes
        );
    }
    let m = &r.machine;
    let _ = writeln!(
        out,
        "\nmachine: {:.2} of {} cores busy ({:.0}%){}; harness {:.3} cores ({:.0}% of busy), other programs {:.3} cores; cluster resyncs {}",
        m.busy_cores,
        m.cores,
        m.busy_percent,
        if m.saturated { " SATURATED: the figures above include waiting for CPU" } else { "" },
        m.harness_cores,
        m.harness_share_percent,
        m.other_cores,
        m.cluster_resyncs
    );
    for fr in &r.faults {
        let a = &fr.after;
        let _ = write!(
            out,
            "\nfault {} at {:.1}s: targets {:?}; until {:.1}s worst node staleness {:.0} ms, fewest nodes served {:?} (fresh {:?}), fewest pods {:?}, duplicates {}",
            fr.outcome.fault, fr.outcome.at_s, fr.outcome.targets, a.to_s, a.worst_node_staleness_ms, a.fewest_nodes_served, a.fewest_nodes_fresh, a.fewest_pods_served, a.duplicate_scrapes
        );
        if let Some(e) = &fr.error {
            let _ = write!(out, "; NOT INJECTED: {e}");
        }
        for (k, v) in &fr.outcome.measured {
            let _ = write!(out, "; {k} {v}");
        }
        out.push('\n');
    }
    out
}
