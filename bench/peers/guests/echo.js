// The benchmark's guest for the vm2 peer: the same echo as bench/guests/echo.py.
module.exports.echo = function echo(x) {
  return x;
};
