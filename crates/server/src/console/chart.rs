//! Small charts drawn on the server as inline SVG: numbers in, markup out
//! (no text from a tenant ever reaches it), styled by the console's
//! stylesheet (no inline style: the CSP allows none).

use std::fmt::Write;

const W: f64 = 300.0;
const H: f64 = 60.0;

/// A bar per value, oldest first, scaled to the largest; `label` is read
/// by screen readers and shown as the chart's tooltip; `peak` names the
/// largest value (the scale).
pub fn bars(values: &[f64], label: &str, peak: &str) -> String {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(1) as f64;
    let step = W / n;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{label}"><title>{label}</title>"#
    );
    let _ = write!(
        out,
        r#"<line class="axis" x1="0" y1="{H}" x2="{W}" y2="{H}"/>"#
    );
    for (i, v) in values.iter().enumerate() {
        if *v <= 0.0 || max <= 0.0 {
            continue;
        }
        let h = (v / max * (H - 2.0)).max(1.0);
        let x = i as f64 * step;
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"/>"#,
            H - h,
            (step - 1.0).max(0.5),
        );
    }
    let _ = write!(
        out,
        r#"<text class="peak" x="2" y="10">{peak}</text></svg>"#
    );
    out
}

/// Bytes for people: `1.5 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_skip_empty_minutes() {
        let svg = bars(&[0.0, 5.0, 10.0], "requests per minute", "10");
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains(r#"height="58.0""#), "{svg}");
        assert!(svg.contains("aria-label=\"requests per minute\""));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 * 1024 * 1024 * 1024), "100.0 GiB");
    }
}
