// run_sync(): runs one awaitable to completion on a private io_context, for unit tests of
// coroutine code. Rethrows what the coroutine threw.
#pragma once

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <exception>
#include <optional>

namespace moat::testing {

template <class T>
T run_sync(asio::awaitable<T> a) {
  asio::io_context io;
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out.emplace(std::move(v));
  });
  io.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

}  // namespace moat::testing
