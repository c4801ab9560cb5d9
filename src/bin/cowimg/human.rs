//! Numbers as qemu-img prints them for people.

/// qemu-img's `size_to_str`: three significant digits and a binary unit, "44.5 KiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // As qemu: the largest power of 1024 that leaves a value below 1000.
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes as f64 * 1.024 >= (1u64 << (10 * (unit + 1))) as f64 {
        unit += 1;
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    format!("{} {}B", three_significant(value), UNITS[unit])
}

/// printf's `%0.3g` for values below 1000.
fn three_significant(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let integer_digits = value.log10().floor() as i32 + 1;
    let decimals = (3 - integer_digits).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_as_qemu_prints_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1000), "0.977 KiB");
        assert_eq!(size(45568), "44.5 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(4 << 40), "4 TiB");
    }
}

/// "YYYY-MM-DD HH:MM:SS" in UTC (qemu-img uses local time; cowimg's machines run UTC).
pub fn date(secs: i64) -> String {
    cowimg::report::utc(secs)
}

#[cfg(test)]
mod date_tests {
    #[test]
    fn dates_in_utc() {
        assert_eq!(super::date(0), "1970-01-01 00:00:00");
        assert_eq!(super::date(1_795_256_964), "2026-11-21 10:29:24");
        assert_eq!(super::date(951_782_400), "2000-02-29 00:00:00");
    }
}
