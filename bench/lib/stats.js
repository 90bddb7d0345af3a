export function median (values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = v.length >> 1
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

export function min (values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x))
  return v.length === 0 ? null : Math.min(...v)
}

export function max (values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x))
  return v.length === 0 ? null : Math.max(...v)
}
