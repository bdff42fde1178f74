//! The few complex-number operations the power flow needs, in `f64`.
//!
//! Design: a dozen lines of our own instead of a dependency; the power flow uses only
//! arithmetic, conjugate, magnitude and polar construction.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// A complex number `re + j·im`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct C64 {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl C64 {
    /// `re + j·im`.
    #[must_use]
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    /// `magnitude · e^{j·angle}` with the angle in radians.
    #[must_use]
    pub fn polar(magnitude: f64, angle: f64) -> Self {
        Self::new(magnitude * angle.cos(), magnitude * angle.sin())
    }

    /// The complex conjugate.
    #[must_use]
    pub fn conj(self) -> Self {
        Self::new(self.re, -self.im)
    }

    /// `|z|²`.
    #[must_use]
    pub fn norm_sqr(self) -> f64 {
        self.re * self.re + self.im * self.im
    }

    /// `|z|`. Plain `sqrt(re² + im²)`: `hypot`'s overflow guard costs a sixth of a year's
    /// run time, and per-unit values are nowhere near overflow.
    #[must_use]
    pub fn abs(self) -> f64 {
        self.norm_sqr().sqrt()
    }

    /// The angle in radians.
    #[must_use]
    pub fn arg(self) -> f64 {
        self.im.atan2(self.re)
    }

    /// `1 / z`.
    #[must_use]
    pub fn inv(self) -> Self {
        let d = self.norm_sqr();
        Self::new(self.re / d, -self.im / d)
    }

    /// `z · k` for a real `k`.
    #[must_use]
    pub fn scale(self, k: f64) -> Self {
        Self::new(self.re * k, self.im * k)
    }
}

impl Add for C64 {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
}

impl AddAssign for C64 {
    fn add_assign(&mut self, o: Self) {
        self.re += o.re;
        self.im += o.im;
    }
}

impl Sub for C64 {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
}

impl Mul for C64 {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Self::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

impl Div for C64 {
    type Output = Self;
    #[allow(clippy::suspicious_arithmetic_impl, reason = "a / b = a · (1 / b)")]
    fn div(self, o: Self) -> Self {
        self * o.inv()
    }
}

impl Neg for C64 {
    type Output = Self;
    fn neg(self) -> Self {
        Self::new(-self.re, -self.im)
    }
}
