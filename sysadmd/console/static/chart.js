// A small line chart on a canvas: the last N samples of one series, 0..max.

export class LineChart {
  constructor(canvas, { max = 100, points = 60, color = "#2563eb", unit = "%" } = {}) {
    this.canvas = canvas;
    this.max = max;
    this.points = points;
    this.color = color;
    this.unit = unit;
    this.values = [];
    this.samples = 0;
  }

  push(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    this.values.push(value);
    if (this.values.length > this.points) this.values.shift();
    this.samples += 1;
    this.canvas.dataset.samples = String(this.samples);
    this.canvas.dataset.last = value.toFixed(1);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(100, canvas.clientWidth);
    const height = Math.max(60, canvas.clientHeight);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(this.max, ...this.values);
    ctx.strokeStyle = "#d1d5db";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = Math.round((height - 1) * i / 4) + 0.5;
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(width, y); ctx.stroke();
    }
    if (!this.values.length) return;
    const step = width / Math.max(1, this.points - 1);
    const start = width - step * (this.values.length - 1);
    ctx.beginPath();
    this.values.forEach((value, i) => {
      const x = start + i * step;
      const y = height - 2 - (height - 4) * (value / top);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = this.color;
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.lineTo(width, height); ctx.lineTo(start, height); ctx.closePath();
    ctx.globalAlpha = 0.12; ctx.fillStyle = this.color; ctx.fill(); ctx.globalAlpha = 1;
  }
}
