//! Video files through FFmpeg's libraries (`ffmpeg-next`).

use std::collections::VecDeque;
use std::path::Path;

use eyre::{eyre, Context, Result};
use ffmpeg_next as ffmpeg;

use crate::sources::RawFrame;

/// Decodes the best video stream of a file to RGB8 frames, in order.
pub struct VideoReader {
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    decoder: ffmpeg::decoder::Video,
    scaler: Option<(
        ffmpeg::software::scaling::Context,
        ffmpeg::format::Pixel,
        u32,
        u32,
    )>,
    pending: VecDeque<RawFrame>,
    eof_sent: bool,
    decoded: u64,
    name: String,
}

// The FFmpeg contexts are only touched from the thread that owns the reader.
unsafe impl Send for VideoReader {}

impl VideoReader {
    pub fn open(path: &Path) -> Result<Self> {
        ffmpeg::init().map_err(|e| eyre!("cannot initialise FFmpeg: {e}"))?;
        let name = path.display().to_string();
        let input =
            ffmpeg::format::input(&path).map_err(|e| eyre!("cannot open video `{name}`: {e}"))?;
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| eyre!("`{name}` has no video stream"))?;
        let stream_index = stream.index();
        let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| eyre!("cannot read the codec parameters of `{name}`: {e}"))?;
        let decoder = ctx
            .decoder()
            .video()
            .map_err(|e| eyre!("no decoder for the video of `{name}`: {e}"))?;
        Ok(Self {
            input,
            stream_index,
            decoder,
            scaler: None,
            pending: VecDeque::new(),
            eof_sent: false,
            decoded: 0,
            name,
        })
    }

    fn drain_decoder(&mut self) -> Result<()> {
        let mut frame = ffmpeg::frame::Video::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
            let rebuild = match &self.scaler {
                Some((_, f, sw, sh)) => *f != fmt || *sw != w || *sh != h,
                None => true,
            };
            if rebuild {
                let ctx = ffmpeg::software::scaling::Context::get(
                    fmt,
                    w,
                    h,
                    ffmpeg::format::Pixel::RGB24,
                    w,
                    h,
                    ffmpeg::software::scaling::Flags::BILINEAR,
                )
                .map_err(|e| eyre!("cannot convert the pixels of `{}`: {e}", self.name))?;
                self.scaler = Some((ctx, fmt, w, h));
            }
            let mut rgb = ffmpeg::frame::Video::empty();
            if let Some((scaler, ..)) = self.scaler.as_mut() {
                scaler
                    .run(&frame, &mut rgb)
                    .map_err(|e| eyre!("cannot convert a frame of `{}`: {e}", self.name))?;
            }
            let stride = rgb.stride(0);
            let data = rgb.data(0);
            let row = w as usize * 3;
            let mut packed = Vec::with_capacity(row * h as usize);
            for y in 0..h as usize {
                packed.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            self.pending.push_back(RawFrame {
                width: w,
                height: h,
                rgb: packed,
                origin: format!("{}#{}", self.name, self.decoded),
            });
            self.decoded += 1;
        }
        Ok(())
    }

    /// The next decoded frame, `None` at the end of the stream.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            if self.eof_sent {
                return Ok(None);
            }
            match self.input.packets().next() {
                Some((stream, packet)) => {
                    if stream.index() != self.stream_index {
                        continue;
                    }
                    self.decoder
                        .send_packet(&packet)
                        .map_err(|e| eyre!("corrupt packet in `{}`: {e}", self.name))
                        .wrap_err("video decode")?;
                }
                None => {
                    self.decoder
                        .send_eof()
                        .map_err(|e| eyre!("cannot flush the decoder of `{}`: {e}", self.name))?;
                    self.eof_sent = true;
                }
            }
            self.drain_decoder()?;
        }
    }
}
