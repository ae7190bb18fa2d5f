//! Python's `repr(float)` (shortest round-trip digits, Python's layout), needed for the byte-exact
//! `quant_state` JSON that bitsandbytes writes with `json.dumps`.

/// `repr(x)` for a Python float (a double).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-N".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    // Python's repr: scientific when the exponent is < -4 or >= 16.
    if !(-4..16).contains(&exp) {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{frac}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{a}.{b}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::python_float_repr as r;

    #[test]
    fn matches_python() {
        // Expected strings are what CPython 3 prints for repr() of these doubles.
        assert_eq!(r(0.05037816241383553), "0.05037816241383553");
        assert_eq!(r(1e-5), "1e-05");
        assert_eq!(r(0.0001), "0.0001");
        assert_eq!(r(1.0), "1.0");
        assert_eq!(r(123456.0), "123456.0");
        assert_eq!(r(1e16), "1e+16");
        assert_eq!(r(1.5e16), "1.5e+16");
        assert_eq!(r(-2.5), "-2.5");
        assert_eq!(r(0.1f32 as f64), "0.10000000149011612");
        assert_eq!(r(1234567890123456.0), "1234567890123456.0");
        assert_eq!(r(-0.0), "-0.0");
    }
}
