// offload(): run a blocking call (fsync, rename, reading a queue file) on the worker pool and
// resume the calling coroutine on its own executor with the result, so the event loop keeps
// serving other sessions meanwhile.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>
#include <optional>
#include <utility>

namespace moat::gateway {

template <class F>
auto offload(asio::thread_pool& pool, F fn) -> asio::awaitable<decltype(fn())> {
  std::optional<decltype(fn())> out;
  co_await asio::co_spawn(
      pool,
      [&]() -> asio::awaitable<void> {
        out.emplace(fn());
        co_return;
      },
      asio::use_awaitable);
  co_return std::move(*out);
}

}  // namespace moat::gateway
