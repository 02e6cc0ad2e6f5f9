//! Bringing a dataset to another image shape: grey to RGB (the grey value in every channel), RGB
//! to grey (ITU-R 601 luma, as the `image` crate converts) and a bilinear resize. Used to score
//! a model on an out-of-distribution set of another shape (CIFAR-10 models on MNIST digits), the
//! way the server would preprocess those images.

use image::imageops::{FilterType, resize};
use image::{GrayImage, ImageBuffer, Luma};

use super::{Dataset, ImageShape};

impl Dataset {
    /// This dataset with every image converted to `shape` (labels and class names unchanged).
    pub fn resampled(&self, shape: ImageShape) -> Dataset {
        let src = self.shape;
        let plane = src.height * src.width;
        let mut images =
            Vec::with_capacity(self.len() * shape.channels * shape.height * shape.width);
        for img in self.images.chunks_exact(src.channels * plane) {
            let channel = |c: usize| &img[c * plane..(c + 1) * plane];
            let planes: Vec<Vec<u8>> = match (src.channels, shape.channels) {
                (a, b) if a == b => (0..a).map(|c| channel(c).to_vec()).collect(),
                (1, n) => vec![channel(0).to_vec(); n],
                (3, 1) => vec![
                    (0..plane)
                        .map(|p| {
                            let [r, g, b] = [0, 1, 2].map(|c| f32::from(channel(c)[p]));
                            (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
                        })
                        .collect(),
                ],
                // Any other pair: the first channel, repeated.
                (_, n) => vec![channel(0).to_vec(); n],
            };
            for p in planes {
                let gray: GrayImage =
                    ImageBuffer::<Luma<u8>, _>::from_raw(src.width as u32, src.height as u32, p)
                        .expect("plane has width * height pixels");
                let out = if (src.width, src.height) == (shape.width, shape.height) {
                    gray
                } else {
                    resize(
                        &gray,
                        shape.width as u32,
                        shape.height as u32,
                        FilterType::Triangle,
                    )
                };
                images.extend_from_slice(out.as_raw());
            }
        }
        Dataset {
            shape,
            images,
            labels: self.labels.clone(),
            class_names: self.class_names.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(shape: ImageShape, images: Vec<u8>) -> Dataset {
        Dataset {
            shape,
            images,
            labels: vec![0],
            class_names: vec!["a".into()],
        }
    }

    #[test]
    fn grey_becomes_rgb_and_rgb_becomes_luma() {
        let g = one(
            ImageShape {
                channels: 1,
                height: 1,
                width: 2,
            },
            vec![10, 200],
        );
        let rgb = g.resampled(ImageShape {
            channels: 3,
            height: 1,
            width: 2,
        });
        assert_eq!(rgb.images, vec![10, 200, 10, 200, 10, 200]);
        let c = one(
            ImageShape {
                channels: 3,
                height: 1,
                width: 1,
            },
            vec![255, 0, 0],
        );
        assert_eq!(
            c.resampled(ImageShape {
                channels: 1,
                height: 1,
                width: 1
            })
            .images,
            vec![76]
        );
    }

    #[test]
    fn resizes_to_the_target_size_keeping_flat_images_flat() {
        let g = one(
            ImageShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            vec![77; 28 * 28],
        );
        let r = g.resampled(ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        });
        assert_eq!(r.images.len(), 3 * 32 * 32);
        assert!(r.images.iter().all(|&v| v == 77));
        assert_eq!(r.labels, g.labels);
    }
}
