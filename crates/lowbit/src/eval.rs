//! Evaluation: accuracy, per-class accuracy, confusion matrix, and the JSON report types.
use serde::Serialize;

/// Classification metrics on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// correct / total, in 0..=1.
    pub accuracy: f64,
    /// Number of correct predictions.
    pub correct: usize,
    /// Number of samples.
    pub total: usize,
    /// Accuracy of each true class (NaN-free: a class with no samples gets 0).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u32>>,
}

/// Index of the largest value in each row of `logits` (`classes` wide); ties go to the lowest index and NaN
/// never wins.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    if classes == 0 {
        return Vec::new();
    }
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// Computes metrics from predictions and labels (same length). Predictions or labels outside `classes` count as
/// wrong and are left out of the confusion matrix.
pub fn metrics(predictions: &[usize], labels: &[u8], classes: usize) -> Metrics {
    let mut confusion = vec![vec![0u32; classes]; classes];
    let mut correct = 0;
    for (&p, &l) in predictions.iter().zip(labels) {
        let l = l as usize;
        if p == l {
            correct += 1;
        }
        if l < classes && p < classes {
            confusion[l][p] += 1;
        }
    }
    let total = predictions.len().min(labels.len());
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: u32 = row.iter().sum();
            if n == 0 {
                0.0
            } else {
                row[c] as f64 / n as f64
            }
        })
        .collect();
    Metrics {
        accuracy: if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        },
        correct,
        total,
        per_class_accuracy,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_correct_over_total_with_confusion_counts() {
        let m = metrics(&[0, 1, 1, 2], &[0, 1, 2, 2], 3);
        assert_eq!(m.correct, 3);
        assert_eq!(m.total, 4);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert_eq!(m.confusion[2], vec![0, 1, 1]);
        assert_eq!(m.per_class_accuracy, vec![1.0, 1.0, 0.5]);
    }

    #[test]
    fn argmax_takes_lowest_index_on_ties_and_skips_nan() {
        assert_eq!(
            argmax_rows(&[1.0, 3.0, 3.0, f32::NAN, 0.5, 0.2], 3),
            vec![1, 1]
        );
    }
}
